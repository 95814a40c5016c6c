package aeterna

// memfd_create(2) on aarch64 (the generic system call table).
const sysMemfdCreate = 279
