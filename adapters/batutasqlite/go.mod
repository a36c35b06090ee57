module github.com/batuta-dev/batuta/adapters/batutasqlite

go 1.26

require github.com/batuta-dev/batuta v0.0.0

replace github.com/batuta-dev/batuta => ../..
