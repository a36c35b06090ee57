module github.com/batuta-dev/batuta/dashboard

go 1.26.0

require github.com/batuta-dev/batuta v0.0.0

replace github.com/batuta-dev/batuta => ..
