//! The deployment files against the configuration they feed: `docker-compose.yml` (with
//! `deploy/nginx.conf`) and the Helm chart in `charts/aerugo/`.
//!
//! Every `AERUGO_<SECTION>__<KEY>` variable the compose file sets for an Aerugo container, and the
//! chart's `config` values plus the variables its templates set, must pass [`Config::load`]:
//! unknown keys are refused (`deny_unknown_fields`) and values validated, so a typo in a
//! deployment file fails here instead of at a node's start. A few cluster rules are checked too
//! (one signing key on a shared volume, every node behind the load balancer, the blob host apart
//! from the registry's).
//!
//! Test-only. Reads repository files; depends on nothing else in the crate but `config`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::{Config, DatabaseKind, StorageType};

/// `AERUGO_` variables that are not configuration keys (no `__`): the config file path and the
/// log filter override. Any other `AERUGO_` name without `__` is a typo that `Config::load`
/// would silently ignore.
const NON_KEY_VARIABLES: &[&str] = &["AERUGO_CONFIG", "AERUGO_LOG"];

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// A YAML file with its `<<` merge keys applied (compose files share settings that way).
fn read_yaml(relative: &str) -> Value {
    let mut value: Value = serde_yaml::from_str(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"));
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("{relative}: bad merge key: {e}"));
    value
}

/// Compose's variable interpolation, with every host variable unset, so the defaults the file
/// runs with out of the box are what gets checked: `${VAR:-default}` and `${VAR-default}` give
/// the default, `${VAR:?message}` a placeholder (the operator must set it), `${VAR}` and `$VAR`
/// nothing, `$$` a literal `$`.
fn interpolate(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            // The matching brace: defaults may hold `${...}` themselves.
            let mut depth = 1;
            let end = body
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or_else(|| panic!("unclosed ${{ in {text:?}"));
            let expr = &body[..end];
            let name_end = expr
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len());
            let operator = &expr[name_end..];
            if let Some(default) = operator
                .strip_prefix(":-")
                .or_else(|| operator.strip_prefix('-'))
            {
                out.push_str(&interpolate(default));
            } else if operator.starts_with(":?") || operator.starts_with('?') {
                out.push_str("operator-supplied-value");
            } else {
                assert!(operator.is_empty(), "unsupported interpolation ${{{expr}}}");
            }
            rest = &body[end + 1..];
        } else {
            let name_end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            rest = &after[name_end..];
        }
    }
    out.push_str(rest);
    out
}

fn scalar(value: &Value, what: &str) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => panic!("{what}: expected a scalar, found {other:?}"),
    }
}

/// The `environment` of a compose service, in either of compose's two forms, interpolated.
fn service_environment(name: &str, service: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    match service.get("environment") {
        None => {}
        Some(Value::Mapping(map)) => {
            for (key, value) in map {
                let key = scalar(key, name);
                let value = interpolate(&scalar(value, &format!("{name}: {key}")));
                env.insert(key, value);
            }
        }
        Some(Value::Sequence(items)) => {
            for item in items {
                let item = scalar(item, name);
                let (key, value) = item.split_once('=').unwrap_or((&item, ""));
                env.insert(key.to_owned(), interpolate(value));
            }
        }
        Some(other) => panic!("{name}: environment must be a mapping or a list, found {other:?}"),
    }
    env
}

/// The configuration variables among `env`, refusing `AERUGO_` names that look like keys but are
/// not (one underscore instead of two, say), since `Config::load` would skip them unnoticed.
fn config_variables(owner: &str, env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for (key, value) in env {
        if !key.starts_with("AERUGO_") {
            continue;
        }
        if key.contains("__") {
            vars.insert(key.clone(), value.clone());
        } else {
            assert!(
                NON_KEY_VARIABLES.contains(&key.as_str()),
                "{owner}: {key} is not a configuration variable (AERUGO_<SECTION>__<KEY>, two \
                 underscores between section and key)"
            );
        }
    }
    vars
}

/// `Config::load` with exactly `vars` as configuration variables (and `file`, if any).
fn load_with(owner: &str, file: Option<(&str, &str)>, vars: &BTreeMap<String, String>) -> Config {
    let mut loaded = None;
    figment::Jail::expect_with(|jail| {
        // Inside the jail: other tests set variables only while they hold it.
        let strays: Vec<String> = std::env::vars()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("AERUGO_") && k.contains("__") && !vars.contains_key(k))
            .collect();
        if !strays.is_empty() {
            return Err(format!(
                "unset {strays:?} to run this test: they would mix into {owner}'s configuration"
            )
            .into());
        }
        // Credentials must come from the deployment's own variables, not the test's environment.
        jail.set_env("AWS_ACCESS_KEY_ID", "");
        jail.set_env("AWS_SECRET_ACCESS_KEY", "");
        for (key, value) in vars {
            jail.set_env(key, value);
        }
        let path = match file {
            Some((name, contents)) => {
                jail.create_file(name, contents)?;
                Some(jail.directory().join(name))
            }
            None => None,
        };
        let config = Config::load(path.as_deref())
            .map_err(|e| format!("{owner}: {e} (variables: {:?})", vars.keys()))?;
        loaded = Some(config);
        Ok(())
    });
    loaded.unwrap_or_else(|| panic!("{owner}: not loaded"))
}

/// The host of an `http(s)://host[:port]/…` URL.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// `host:port` of every `server` line in nginx.conf's `upstream aerugo { … }` block.
fn nginx_upstream_servers(conf: &str) -> BTreeSet<String> {
    let block = conf
        .split_once("upstream aerugo {")
        .map(|(_, rest)| rest.split_once('}').map_or(rest, |(block, _)| block))
        .unwrap_or_else(|| panic!("deploy/nginx.conf has no `upstream aerugo {{ … }}` block"));
    block
        .lines()
        .map(str::trim)
        .filter_map(|line| line.strip_prefix("server "))
        .map(|rest| {
            rest.split(|c: char| c.is_whitespace() || c == ';')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[test]
fn docker_compose_configures_every_aerugo_container_validly() {
    let compose = read_yaml("docker-compose.yml");
    let services = compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("docker-compose.yml has services");

    // Aerugo containers are those built from this repository (or running its image).
    let mut nodes = BTreeMap::new();
    let mut jobs = 0;
    for (name, service) in services {
        let name = scalar(name, "service name");
        let built_here = service.get("build").is_some();
        let image = service.get("image").map(|i| scalar(i, &name));
        if !built_here && !image.is_some_and(|i| i.starts_with("aerugo")) {
            continue;
        }
        let command = match service.get("command") {
            Some(Value::Sequence(args)) => args.iter().map(|a| scalar(a, &name)).collect(),
            Some(other) => vec![scalar(other, &name)],
            None => Vec::new(),
        };
        let env = service_environment(&name, service);
        let vars = config_variables(&name, &env);
        let config = load_with(&name, None, &vars);
        // Every container, the migration job included, runs on the shared cluster services.
        assert_eq!(
            config.database_kind().unwrap(),
            DatabaseKind::Postgres,
            "{name}"
        );
        assert_eq!(config.storage.kind, StorageType::S3, "{name}");
        match command.first().map(String::as_str) {
            None | Some("serve") => {
                nodes.insert(name, (service.clone(), config));
            }
            Some("migrate") => jobs += 1,
            Some(other) => panic!("{name}: unexpected aerugo command {other:?}"),
        }
    }
    assert!(
        nodes.len() >= 3,
        "expected at least three Aerugo nodes, found {:?}",
        nodes.keys()
    );
    assert_eq!(jobs, 1, "expected one `aerugo migrate` job");

    let (_, (_, first)) = nodes.first_key_value().unwrap();
    let key_file = first.auth.signing_key_file.clone();
    let key_dir = key_file.parent().unwrap().to_string_lossy().into_owned();
    let mut key_volumes = BTreeSet::new();
    for (name, (service, config)) in &nodes {
        assert!(
            config.cache.redis_url.is_some(),
            "{name}: nodes share Redis"
        );
        assert_eq!(
            config.auth.signing_key_file, key_file,
            "{name}: one signing key"
        );
        assert_eq!(
            config.to_redacted_toml(),
            first.to_redacted_toml(),
            "{name}: nodes of one cluster are configured alike"
        );
        // The key's directory is a volume, the same one on every node.
        let volumes = service.get("volumes").and_then(Value::as_sequence);
        let source = volumes
            .into_iter()
            .flatten()
            .map(|v| scalar(v, name))
            .find_map(|v| {
                let mut parts = v.split(':');
                let (source, target) = (parts.next()?, parts.next()?);
                (target == key_dir).then(|| source.to_owned())
            })
            .unwrap_or_else(|| panic!("{name}: no volume at {key_dir} for the signing key"));
        key_volumes.insert(source);
    }
    assert_eq!(
        key_volumes.len(),
        1,
        "nodes mount different key volumes: {key_volumes:?}"
    );

    // Clients reach the registry through the load balancer, and the blobs elsewhere.
    let public_url = &first.server.public_url;
    assert!(
        !public_url.is_empty(),
        "server.public_url must name the load balancer"
    );
    let blob_url = first
        .storage
        .public_endpoint
        .as_deref()
        .expect("storage.public_endpoint: the MinIO address clients use");
    let (registry_host, blob_host) = (url_host(public_url), url_host(blob_url));
    assert!(
        blob_host != registry_host && !blob_host.ends_with(&format!(".{registry_host}")),
        "the blob host {blob_host} must be off the registry's domain {registry_host} \
         (clients would send their registry token to it; docs/storage.md)"
    );
    let lb = services
        .iter()
        .find(|(_, s)| {
            s.get("image")
                .is_some_and(|i| scalar(i, "image").starts_with("nginx"))
        })
        .map(|(_, s)| s)
        .expect("a load balancer (nginx) service");
    let lb_port = lb
        .get("ports")
        .and_then(Value::as_sequence)
        .and_then(|p| p.first())
        .map(|p| scalar(p, "lb ports"))
        .and_then(|p| p.split(':').rev().nth(1).map(str::to_owned))
        .expect("the load balancer publishes a port");
    assert!(
        public_url.ends_with(&format!(":{lb_port}")),
        "server.public_url {public_url} must name the load balancer's port {lb_port}"
    );

    // The nodes believe forwarded headers (the client address logins are throttled by) from
    // the load balancer, at its fixed address in the compose network, and from nothing else.
    let lb_ip: std::net::IpAddr = lb
        .get("networks")
        .and_then(|n| n.get("default"))
        .and_then(|d| d.get("ipv4_address"))
        .map(|a| scalar(a, "lb ipv4_address"))
        .expect("the load balancer has a fixed address (networks.default.ipv4_address)")
        .parse()
        .expect("lb ipv4_address is an IP address");
    let subnet: ipnet::IpNet = compose
        .get("networks")
        .and_then(|n| n.get("default"))
        .and_then(|d| d.get("ipam"))
        .and_then(|i| i.get("config"))
        .and_then(Value::as_sequence)
        .and_then(|c| c.first())
        .and_then(|c| c.get("subnet"))
        .map(|s| scalar(s, "subnet"))
        .expect("the default network has a fixed subnet")
        .parse()
        .expect("the subnet is a CIDR");
    assert!(subnet.contains(&lb_ip), "{lb_ip} is outside {subnet}");
    let trusted = &first.server.trusted_proxies;
    assert!(
        trusted.contains(lb_ip),
        "server.trusted_proxies {:?} must hold the load balancer {lb_ip}",
        trusted.0
    );
    assert!(
        trusted
            .0
            .iter()
            .all(|n| n.prefix_len() == n.max_prefix_len()),
        "server.trusted_proxies {:?} must name the load balancer alone, not a network other \
         containers share",
        trusted.0
    );

    let port = first.server.listen_address.port();
    let expected: BTreeSet<String> = nodes.keys().map(|n| format!("{n}:{port}")).collect();
    assert_eq!(
        nginx_upstream_servers(&read("deploy/nginx.conf")),
        expected,
        "deploy/nginx.conf must send traffic to every node, on the port it listens on"
    );
}

/// Converts the chart's `config` values to TOML as its `ConfigMap` template does: nulls left out.
fn yaml_to_toml(value: &Value, key: &str) -> Option<toml::Value> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => toml::Value::Integer(
            n.as_i64()
                .unwrap_or_else(|| panic!("{key}: settings are integers, not {n}")),
        ),
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Sequence(items) => toml::Value::Array(
            items
                .iter()
                .map(|v| yaml_to_toml(v, key).unwrap_or_else(|| panic!("{key}: null in a list")))
                .collect(),
        ),
        Value::Mapping(map) => {
            let mut table = toml::Table::new();
            for (k, v) in map {
                let k = scalar(k, key);
                if let Some(v) = yaml_to_toml(v, &format!("{key}.{k}")) {
                    table.insert(k, v);
                }
            }
            toml::Value::Table(table)
        }
        Value::Tagged(_) => panic!("{key}: YAML tags are not supported"),
    })
}

/// A template's text, followed by the bodies of the `_helpers.tpl` definitions it includes (the
/// database variable, for one, is defined there once for the nodes and the migration Job).
fn template_text(relative: &str) -> String {
    let helpers = read("charts/aerugo/templates/_helpers.tpl");
    let defines: BTreeMap<&str, &str> = helpers
        .split("{{- define \"")
        .skip(1)
        .filter_map(|chunk| chunk.split_once('"'))
        .collect();
    let mut text = read(relative);
    let included: Vec<&str> = text
        .split("include \"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(name, _)| name))
        .filter_map(|name| defines.get(name).copied())
        .collect();
    text.push('\n');
    text.push_str(&included.join("\n"));
    text
}

/// `(name, literal value)` of every `- name: AERUGO_…` in a template's text; the value is `None`
/// when it comes from a Secret or a template expression.
fn template_variables(text: &str) -> Vec<(String, Option<String>)> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut vars = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.strip_prefix("- name: AERUGO_") else {
            continue;
        };
        let literal = lines
            .get(i + 1)
            .and_then(|next| next.strip_prefix("value: "))
            .filter(|v| !v.contains("{{"))
            .map(|v| v.trim_matches('"').to_owned());
        vars.push((format!("AERUGO_{name}"), literal));
    }
    vars
}

/// The variables of a template, ready for [`load_with`]: literal values as written, stand-ins for
/// those filled in from Secrets or values. A path the pod reads (`AERUGO_CONFIG`, `*_FILE`) must
/// lie in one of the template's `mountPath`s, and is replaced by a file that exists here.
fn template_environment(relative: &str, existing_file: &Path) -> BTreeMap<String, String> {
    let text = template_text(relative);
    let mounts: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mountPath: "))
        .collect();
    let mut env = BTreeMap::new();
    for (name, literal) in template_variables(&text) {
        let is_path = name == "AERUGO_CONFIG" || name.ends_with("_FILE");
        if let (true, Some(path)) = (is_path, &literal) {
            assert!(
                mounts
                    .iter()
                    .any(|m| path == m || path.starts_with(&format!("{m}/"))),
                "{relative}: {name}={path} is not under any volume mount ({mounts:?})"
            );
        }
        let value = match literal {
            Some(_) if is_path => existing_file.to_string_lossy().into_owned(),
            Some(literal) => literal,
            None => placeholder(&name, existing_file),
        };
        env.insert(name, value);
    }
    env
}

/// Stand-ins for the values a template fills in from Secrets or other values; `file` exists (S3's
/// secret key file is read at load time).
fn placeholder(name: &str, file: &Path) -> String {
    match name {
        "AERUGO_DATABASE__URL" => "postgres://aerugo:pw@cockroach:26257/aerugo".into(),
        "AERUGO_DATABASE__CONNECT_TIMEOUT_SECONDS" => "5".into(),
        "AERUGO_STORAGE__ACCESS_KEY_ID" => "AKIDEXAMPLE".into(),
        "AERUGO_CACHE__REDIS_URL" => "redis://redis:6379/0".into(),
        "AERUGO_LOG__FORMAT" => "json".into(),
        n if n.ends_with("_FILE") => file.to_string_lossy().into_owned(),
        // Anything else: a value that at least lets `Config::load` name an unknown key.
        _ => "placeholder".into(),
    }
}

#[test]
fn helm_chart_values_and_variables_are_valid_configuration() {
    let values = read_yaml("charts/aerugo/values.yaml");
    let config = values.get("config").expect("values.yaml has `config`");
    let toml_value = yaml_to_toml(config, "config").expect("config is not null");
    for secret in [
        "database.url",
        "storage.access_key_id",
        "storage.secret_access_key",
        "cache.redis_url",
        "auth.admin_password",
    ] {
        let (section, key) = secret.split_once('.').unwrap();
        assert!(
            toml_value.get(section).and_then(|s| s.get(key)).is_none(),
            "values.yaml: config.{secret} is a secret; it comes from a Secret, not the ConfigMap"
        );
    }
    let toml_text = toml::to_string(&toml_value).unwrap();

    // A file that exists for the `*_FILE` variables (the S3 secret key is read at load).
    let secret_file =
        std::env::temp_dir().join(format!("aerugo-chart-test-{}", std::process::id()));
    std::fs::write(&secret_file, "s3cr3t\n").unwrap();

    // The nodes: values rendered as aerugo.toml, plus the Deployment's variables.
    let env = template_environment("charts/aerugo/templates/deployment.yaml", &secret_file);
    for required in [
        "AERUGO_CONFIG",
        "AERUGO_DATABASE__URL",
        "AERUGO_AUTH__SIGNING_KEY_FILE",
    ] {
        assert!(
            env.contains_key(required),
            "deployment.yaml does not set {required}"
        );
    }
    let vars = config_variables("deployment.yaml", &env);
    let node = load_with(
        "the chart's Deployment",
        Some(("aerugo.toml", &toml_text)),
        &vars,
    );
    assert_eq!(node.database_kind().unwrap(), DatabaseKind::Postgres);
    assert_eq!(node.storage.kind, StorageType::S3);
    // Behind the ingress every client would share its address (and one attacker's failures
    // would lock everyone out) unless the ingress controller's pods are trusted.
    assert!(
        node.server
            .trusted_proxies
            .contains("10.244.1.7".parse().unwrap()),
        "config.server.trusted_proxies must cover common pod networks by default"
    );
    assert!(node.cache.redis_url.is_some());
    assert_eq!(
        node.storage
            .s3_credentials()
            .unwrap()
            .secret_access_key
            .expose(),
        "s3cr3t"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let configured = values
            .get(probe)
            .and_then(|p| p.get("httpGet"))
            .and_then(|h| h.get("path"))
            .map(|p| scalar(p, probe));
        assert_eq!(configured.as_deref(), Some(path), "values.yaml: {probe}");
    }

    // The migration Job: its variables only (it mounts no ConfigMap).
    let env = template_environment("charts/aerugo/templates/migration-job.yaml", &secret_file);
    let vars = config_variables("migration-job.yaml", &env);
    let job = load_with("the chart's migration job", None, &vars);
    assert_eq!(job.database_kind().unwrap(), DatabaseKind::Postgres);
    let _ = std::fs::remove_file(&secret_file);
}

#[test]
fn interpolation_follows_compose() {
    assert_eq!(interpolate("${A:-x}/${B-y}"), "x/y");
    assert_eq!(interpolate("${A:-${B:-nested}}"), "nested");
    assert_eq!(interpolate("$$HOME ${UNSET} $UNSET."), "$HOME  .");
    assert_eq!(interpolate("${A:?set A}"), "operator-supplied-value");
    assert_eq!(url_host("http://localhost:5000"), "localhost");
    assert_eq!(
        url_host("https://u:p@blobs.example.net/x"),
        "blobs.example.net"
    );
}
