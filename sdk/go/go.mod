module aeterna.dev/sdk

go 1.19
