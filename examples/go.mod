module github.com/batuta-dev/batuta/examples

go 1.26

require github.com/batuta-dev/batuta v0.0.0

require (
	github.com/google/uuid v1.6.0 // indirect
	go.yaml.in/yaml/v3 v3.0.6 // indirect
)

replace github.com/batuta-dev/batuta => ..
