module github.com/batuta-dev/batuta/dashboard

go 1.26.0

require github.com/batuta-dev/batuta v0.0.0

require (
	github.com/stretchr/testify v1.12.1 // indirect
	go.uber.org/goleak v1.3.0 // indirect
)

replace github.com/batuta-dev/batuta => ..
