module github.com/batuta-dev/batuta/bench

go 1.26

require github.com/batuta-dev/batuta v0.0.0

require github.com/robfig/cron/v3 v3.0.1 // indirect

replace github.com/batuta-dev/batuta => ..
