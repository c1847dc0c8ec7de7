{{/* Names, labels and the values-derived pieces shared by the templates. */}}

{{- define "slurm-jwt-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "slurm-jwt-bridge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "slurm-jwt-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "slurm-jwt-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slurm-jwt-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "slurm-jwt-bridge.labels" -}}
helm.sh/chart: {{ include "slurm-jwt-bridge.chart" . }}
{{ include "slurm-jwt-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "slurm-jwt-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "slurm-jwt-bridge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "slurm-jwt-bridge.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Fixed paths inside the pods. */}}
{{- /* The keys emptyDir is mounted at keysVolumeDir; its root is writable by everyone (kubelet
makes it 0777), which the bridge refuses for a keys directory, so the keys live in a 0700
subdirectory the copy creates as the pod's user. */ -}}
{{- define "slurm-jwt-bridge.keysVolumeDir" -}}/etc/slurm-jwt-bridge/keys{{- end -}}
{{- define "slurm-jwt-bridge.keysDir" -}}/etc/slurm-jwt-bridge/keys/ring{{- end -}}
{{- define "slurm-jwt-bridge.configDir" -}}/etc/slurm-jwt-bridge/config{{- end -}}
{{- define "slurm-jwt-bridge.configFile" -}}/etc/slurm-jwt-bridge/config/bridge.toml{{- end -}}
{{- define "slurm-jwt-bridge.secretDir" -}}/var/run/slurm-jwt-bridge/keys-secret{{- end -}}
{{/* Where the image holds the chart's key script (deploy/docker/Dockerfile copies it). */}}
{{- define "slurm-jwt-bridge.scriptsDir" -}}/opt/slurm-jwt-bridge-chart{{- end -}}

{{- define "slurm-jwt-bridge.keysSecretName" -}}
{{- default (printf "%s-keys" (include "slurm-jwt-bridge.fullname" .)) .Values.keys.existingSecret -}}
{{- end -}}

{{- define "slurm-jwt-bridge.jwksConfigMapName" -}}
{{- default (printf "%s-jwks" (include "slurm-jwt-bridge.fullname" .)) .Values.jwksConfigMap.name -}}
{{- end -}}

{{- define "slurm-jwt-bridge.jwksConfigMapEnabled" -}}
{{- if and .Values.jwksConfigMap.enabled (or .Values.jwks .Values.rotation.enabled) -}}true{{- end -}}
{{- end -}}

{{/*
The bridge's TOML configuration: values `config` parsed, [keys] dir set to the pod's key
directory, rendered again. Fails on invalid TOML or a conflicting [keys] dir.
*/}}
{{- define "slurm-jwt-bridge.configToml" -}}
{{- $cfg := fromToml (default "" .Values.config) -}}
{{- if hasKey $cfg "Error" -}}
{{- fail (printf "config: not valid TOML: %s" (get $cfg "Error")) -}}
{{- end -}}
{{- $keysDir := include "slurm-jwt-bridge.keysDir" . -}}
{{- $keys := get $cfg "keys" | default (dict) -}}
{{- if not (kindIs "map" $keys) -}}
{{- fail "config: [keys] must be a table" -}}
{{- end -}}
{{- if and (hasKey $keys "dir") (ne (toString (get $keys "dir")) $keysDir) -}}
{{- fail (printf "config: [keys] dir is set by the chart to %s (the pod's key directory); remove it from config" $keysDir) -}}
{{- end -}}
{{- $_ := set $keys "dir" $keysDir -}}
{{- $_ := set $cfg "keys" $keys -}}
{{- with .Values.rateLimit.storageUri -}}
{{- $rl := get $cfg "rate_limit" | default (dict) -}}
{{- if and (hasKey $rl "storage_uri") (ne (toString (get $rl "storage_uri")) .) -}}
{{- fail "config: [rate_limit] storage_uri differs from rateLimit.storageUri; set only one" -}}
{{- end -}}
{{- $_ := set $rl "storage_uri" . -}}
{{- $_ := set $cfg "rate_limit" $rl -}}
{{- end -}}
{{- toToml $cfg -}}
{{- end -}}

{{/*
Which credentials the rendered config holds (issuer or introspection client_secret, a redis
password in rate_limit.storage_uri or browser.session_storage_uri), comma-separated; empty when
none.
*/}}
{{- define "slurm-jwt-bridge.configCredentials" -}}
{{- $cfg := fromToml (include "slurm-jwt-bridge.configToml" .) -}}
{{- $found := list -}}
{{- range $i, $iss := (get $cfg "issuers" | default (list)) -}}
{{- if and (kindIs "map" $iss) (get $iss "client_secret") -}}
{{- $found = append $found (printf "issuers[%d].client_secret" $i) -}}
{{- end -}}
{{- $intro := get $iss "introspection" | default (dict) -}}
{{- if and (kindIs "map" $intro) (get $intro "client_secret") -}}
{{- $found = append $found (printf "issuers[%d].introspection.client_secret" $i) -}}
{{- end -}}
{{- end -}}
{{- $rl := get $cfg "rate_limit" | default (dict) -}}
{{- $uri := toString (get $rl "storage_uri" | default "") -}}
{{- if or (regexMatch "^[a-z+]+://[^/]*@" $uri) (contains "password=" $uri) -}}
{{- $found = append $found "rate_limit.storage_uri" -}}
{{- end -}}
{{- $br := get $cfg "browser" | default (dict) -}}
{{- $suri := toString (get $br "session_storage_uri" | default "") -}}
{{- if or (regexMatch "^[a-z+]+://[^/]*@" $suri) (contains "password=" $suri) -}}
{{- $found = append $found "browser.session_storage_uri" -}}
{{- end -}}
{{- join ", " $found -}}
{{- end -}}

{{/* The config volume: the ConfigMap, or the Secret with configAsSecret. */}}
{{- define "slurm-jwt-bridge.configVolume" -}}
{{- if .Values.configAsSecret -}}
secret:
  secretName: {{ include "slurm-jwt-bridge.fullname" . }}-config
  defaultMode: 288
{{- else -}}
configMap:
  name: {{ include "slurm-jwt-bridge.fullname" . }}-config
{{- end -}}
{{- end -}}

{{/*
The JWKS ConfigMap's jwks.json: values `jwks`, checked for the shape slurmctld needs.
*/}}
{{- define "slurm-jwt-bridge.jwksJson" -}}
{{- if .Values.jwks -}}
{{- $doc := fromJson .Values.jwks -}}
{{- if hasKey $doc "Error" -}}
{{- fail (printf "jwks: not valid JSON: %s" (get $doc "Error")) -}}
{{- end -}}
{{- $keys := get $doc "keys" -}}
{{- if or (not (kindIs "slice" $keys)) (eq (len $keys) 0) -}}
{{- fail "jwks: needs a non-empty \"keys\" list (slurm-jwt-bridge jwks export --out FILE)" -}}
{{- end -}}
{{- range $i, $k := $keys -}}
{{- if not (kindIs "map" $k) -}}
{{- fail (printf "jwks: keys[%d] is not an object" $i) -}}
{{- end -}}
{{- range $m := list "kty" "alg" "kid" "n" "e" -}}
{{- if not (get $k $m) -}}
{{- fail (printf "jwks: keys[%d] has no %q; slurmctld skips or cannot match such a key" $i $m) -}}
{{- end -}}
{{- end -}}
{{- if or (ne (get $k "kty") "RSA") (ne (get $k "alg") "RS256") -}}
{{- fail (printf "jwks: keys[%d] must have kty RSA and alg RS256" $i) -}}
{{- end -}}
{{- range $m := list "d" "p" "q" "dp" "dq" "qi" "oth" "k" -}}
{{- if hasKey $k $m -}}
{{- fail (printf "jwks: keys[%d] holds a private key (member %s); publish only the public JWKS" $i $m) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- .Values.jwks -}}
{{- else -}}
{"keys": []}
{{- end -}}
{{- end -}}

{{/* The hardening every container gets. */}}
{{- define "slurm-jwt-bridge.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "slurm-jwt-bridge.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
{{- if .Values.podSecurityContext.fsGroup }}
fsGroup: {{ .Values.podSecurityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}
