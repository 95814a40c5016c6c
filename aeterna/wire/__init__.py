"""Wire formats, pure and fuzzed: sd_notify, SRP, the control protocol, listen addresses."""
