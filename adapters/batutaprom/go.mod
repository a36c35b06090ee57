module github.com/batuta-dev/batuta/adapters/batutaprom

go 1.26.0

require github.com/batuta-dev/batuta v0.0.0

require github.com/prometheus/client_golang v1.25.0 // indirect

replace github.com/batuta-dev/batuta => ../..
