//! The deployment files stay in step with the code: the Dockerfile builds this workspace's
//! binary with a toolchain at least as new as the workspace needs and runs the agent with
//! a configuration path the systemd unit uses too, and both start commands are ones the
//! binary accepts. Where docker exists, `cargo test -p plexus-cli --test deploy --
//! --ignored` builds the image for real.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `major.minor` as numbers.
fn version(text: &str) -> (u32, u32) {
    let mut parts = text.split('.').map(|p| p.parse::<u32>().expect("a number"));
    (parts.next().expect("major"), parts.next().expect("minor"))
}

#[test]
fn the_dockerfile_builds_this_workspace_with_a_new_enough_toolchain() {
    let dockerfile = read("Dockerfile");
    let manifest = read("Cargo.toml");
    let needed = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("the workspace's rust-version");
    let image = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .and_then(|l| l.split('-').next())
        .expect("a rust build stage");
    assert!(version(image) >= version(needed), "rust:{image} < {needed}");
    assert!(
        dockerfile.contains("cargo build --release --locked -p plexus-cli --bin plexus"),
        "the build stage builds the plexus binary"
    );
    assert!(
        dockerfile.contains("COPY --from=build /src/target/release/plexus /usr/local/bin/plexus")
    );
    for copied in ["Cargo.toml", "Cargo.lock", "crates"] {
        assert!(
            root().join(copied).exists(),
            "{copied} is copied but missing"
        );
    }
    let entry = dockerfile
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .expect("an entrypoint");
    assert!(
        entry.contains("\"agent\", \"--config\", \"/etc/plexus/plexus.toml\""),
        "{entry}"
    );
}

#[test]
fn the_systemd_unit_starts_the_agent_as_the_binary_expects() {
    let unit = read("deploy/plexus-agent.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(args[0], "/usr/local/bin/plexus");
    assert_eq!(&args[1..], ["agent", "--config", "/etc/plexus/plexus.toml"]);
    let check = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre="))
        .expect("ExecStartPre checks the configuration");
    // The binary accepts the same arguments (checked against its own parser).
    let out = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .args(["agent", "--help"])
        .output()
        .expect("run plexus");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--config", "--check-config"] {
        assert!(help.contains(flag), "plexus agent has no {flag}");
    }
    assert!(check.ends_with("--check-config"), "{check}");
}

#[test]
#[ignore = "builds the image: needs docker and the network, so it runs only with --ignored"]
fn the_image_builds() {
    let status = Command::new("docker")
        .args(["build", "-t", "plexus-test", "."])
        .current_dir(root())
        .status()
        .expect("docker is on the PATH");
    assert!(status.success(), "docker build failed");
}
