module github.com/batuta-dev/batuta/adapters/batutaamqp

go 1.26.0

require (
	github.com/batuta-dev/batuta v0.0.0
	github.com/rabbitmq/amqp091-go v1.16.0
	github.com/stretchr/testify v1.12.1
	go.uber.org/goleak v1.3.0
)

require (
	github.com/google/uuid v1.6.0 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
)

replace github.com/batuta-dev/batuta => ../..
