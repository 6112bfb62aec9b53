//! Integration tests: real HTTP against Aerugo processes started by the testkit.
