// The Slinky slurm-client example for slurm-jwt-bridge's proxy; see docs/examples.md.
// No go.sum is committed: run `go mod tidy` once (it fetches the modules and writes go.sum).
module slurm-jwt-bridge.example/slinky

go 1.25.0

require github.com/SlinkyProject/slurm-client v1.2.2
