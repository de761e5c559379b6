"""Reference implementations (numpy) used to check and benchmark the Rust core."""
