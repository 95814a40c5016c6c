module aeterna.dev/tests/go-conns

go 1.19

require aeterna.dev/sdk v0.0.0

replace aeterna.dev/sdk => ../../../sdk/go
