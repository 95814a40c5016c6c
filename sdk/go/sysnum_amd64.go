package aeterna

// memfd_create(2) on x86_64; Go 1.19's frozen syscall package has no constant.
const sysMemfdCreate = 319
