module github.com/batuta-dev/batuta/adapters/batutamysql

go 1.26

require github.com/batuta-dev/batuta v0.0.0

require (
	filippo.io/edwards25519 v1.2.0 // indirect
	github.com/go-sql-driver/mysql v1.10.1 // indirect
	github.com/stretchr/testify v1.12.1 // indirect
	go.uber.org/goleak v1.3.0 // indirect
)

replace github.com/batuta-dev/batuta => ../..
