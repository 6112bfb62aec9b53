//! Real-client end-to-end tests: skopeo, podman, docker, ctr and oras against aerugo.
