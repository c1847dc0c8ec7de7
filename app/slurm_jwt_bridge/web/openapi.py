"""The service's own OpenAPI document, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from ..names import SIGNING_ALGS

bp = Blueprint("openapi", __name__)

_ERROR = {
    "description": "Refused: an RFC 6749 error body; nothing was minted.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OAuthError"}}},
}
_TOKEN = {
    "description": "A Slurm token for the mapped cluster user.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TokenResponse"}}},
}
_ERRORS = {str(code): _ERROR for code in (400, 401, 403, 413, 429, 500, 503)}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "slurm-jwt-bridge",
            "version": "1",
            "description": "Exchange identity-provider tokens for short-lived Slurm JWTs.",
        },
        "paths": {
            "/oauth/token": {
                "post": {
                    "summary": "RFC 8693 token exchange",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/x-www-form-urlencoded": {
                                "schema": {"$ref": "#/components/schemas/TokenExchangeRequest"}
                            }
                        },
                    },
                    "responses": {"200": _TOKEN, **_ERRORS},
                }
            },
            "/api/v1/token": {
                "post": {
                    "summary": "Exchange the bearer token for a Slurm token",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/TokenOptions"}
                            }
                        },
                    },
                    "responses": {"200": _TOKEN, **_ERRORS},
                }
            },
            "/oauth/device_authorization": {
                "post": {
                    "summary": "RFC 8628 device authorization for `slurm-jwt-bridge login`",
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/x-www-form-urlencoded": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"client_id": {"type": "string"}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "a device code and the code the person confirms",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/DeviceAuthorization"}
                                }
                            },
                        },
                        **_ERRORS,
                        "404": _ERROR,
                    },
                }
            },
            "/api/v1/cli-login": {
                "get": {
                    "summary": "What `slurm-jwt-bridge login` needs for the device grant",
                    "responses": {
                        "200": {
                            "description": "device grant settings",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/CliLogin"}
                                }
                            },
                        },
                        "404": _ERROR,
                        "503": _ERROR,
                    },
                }
            },
            "/.well-known/jwks.json": {
                "get": {
                    "summary": "The RS256 keys slurmctld needs",
                    "responses": {
                        "200": {
                            "description": "JWKS",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Jwks"}
                                }
                            },
                        },
                        "304": {"description": "Not modified (If-None-Match)"},
                    },
                }
            },
            "/healthz": {
                "get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready"},
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "TokenExchangeRequest": {
                    "type": "object",
                    "description": "subject_token and subject_token_type are required, except "
                    "when a listed actor sends actor_token with requested_subject. Empty "
                    "optional fields count as absent (RFC 6749 section 3.1).",
                    "required": ["grant_type"],
                    "properties": {
                        "grant_type": {
                            "type": "string",
                            "enum": [
                                "urn:ietf:params:oauth:grant-type:token-exchange",
                                "urn:ietf:params:oauth:grant-type:device_code",
                            ],
                        },
                        "device_code": {
                            "type": "string",
                            "maxLength": 128,
                            "description": "the device_code grant (the bridge's own device page)",
                        },
                        "subject_token": {"type": "string", "maxLength": 16384},
                        "subject_token_type": {
                            "type": "string",
                            "enum": [
                                "urn:ietf:params:oauth:token-type:access_token",
                                "urn:ietf:params:oauth:token-type:id_token",
                                "urn:ietf:params:oauth:token-type:jwt",
                            ],
                        },
                        "requested_token_type": {
                            "type": "string",
                            "enum": ["urn:ietf:params:oauth:token-type:jwt"],
                        },
                        "requested_lifetime": {"type": "integer", "minimum": 60},
                        "alg": {"type": "string", "enum": list(SIGNING_ALGS)},
                        "actor_token": {"type": "string"},
                        "actor_token_type": {
                            "type": "string",
                            "enum": [
                                "urn:ietf:params:oauth:token-type:access_token",
                                "urn:ietf:params:oauth:token-type:jwt",
                            ],
                        },
                        "requested_subject": {"type": "string"},
                    },
                },
                "TokenOptions": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "lifetime": {"type": "integer", "minimum": 60},
                        "alg": {"type": "string", "enum": list(SIGNING_ALGS)},
                    },
                },
                "TokenResponse": {
                    "type": "object",
                    "required": [
                        "access_token",
                        "issued_token_type",
                        "token_type",
                        "expires_in",
                        "slurm_user",
                    ],
                    "properties": {
                        "access_token": {"type": "string"},
                        "issued_token_type": {
                            "type": "string",
                            "enum": ["urn:ietf:params:oauth:token-type:jwt"],
                        },
                        "token_type": {"type": "string", "enum": ["Bearer"]},
                        "expires_in": {"type": "integer"},
                        "slurm_user": {"type": "string"},
                    },
                },
                "DeviceAuthorization": {
                    "type": "object",
                    "required": [
                        "device_code",
                        "user_code",
                        "verification_uri",
                        "verification_uri_complete",
                        "expires_in",
                        "interval",
                    ],
                    "properties": {
                        "device_code": {"type": "string"},
                        "user_code": {"type": "string"},
                        "verification_uri": {"type": "string"},
                        "verification_uri_complete": {"type": "string"},
                        "expires_in": {"type": "integer"},
                        "interval": {"type": "integer"},
                    },
                },
                "CliLogin": {
                    "type": "object",
                    "description": "grant idp: the device grant at the identity provider, then "
                    "a token exchange; grant bridge: the bridge's own device page (issuer, scope "
                    "and token_exchange_endpoint absent).",
                    "required": [
                        "grant",
                        "client_id",
                        "device_authorization_endpoint",
                        "token_endpoint",
                    ],
                    "properties": {
                        "grant": {"type": "string", "enum": ["idp", "bridge"]},
                        "issuer": {"type": "string"},
                        "client_id": {"type": "string"},
                        "scope": {"type": "string"},
                        "resource": {"type": "string", "nullable": True},
                        "device_authorization_endpoint": {"type": "string"},
                        "token_endpoint": {"type": "string"},
                        "token_exchange_endpoint": {"type": "string"},
                    },
                },
                "OAuthError": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string"},
                        "error_description": {"type": "string"},
                    },
                },
                "Jwks": {
                    "type": "object",
                    "required": ["keys"],
                    "properties": {
                        "keys": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["kty", "alg", "kid", "n", "e"],
                                "properties": {
                                    k: {"type": "string"}
                                    for k in ("kty", "alg", "use", "kid", "n", "e")
                                },
                            },
                        }
                    },
                },
            },
        },
    }


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    return jsonify(document())
