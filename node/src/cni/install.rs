//! `calico-cni-rs install`: what the DaemonSet's init container runs to put the plugin and its
//! network configuration where the container runtime looks for them.
//!
//! - The conflist template (the ConfigMap's `cni_network_config`) has `__KUBERNETES_NODE_NAME__`
//!   replaced by the node's name, and is checked before anything is written: it must be JSON with
//!   a `plugins` list, and each entry of type `calico-cni-rs` must pass the plugin's own
//!   configuration check (unknown keys included). A broken template fails the init container, so
//!   the node never gets a conflist every pod creation would fail on.
//! - Each file is written only when its content differs, under a temporary name in the target
//!   directory, synced, then renamed into place: the runtime never runs a half-copied plugin or
//!   reads a half-written conflist, and a running plugin binary is replaced, not overwritten.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::config::NetConf;

/// The plugin's type (and file name).
pub const PLUGIN: &str = "calico-cni-rs";
/// The placeholder the template's `nodename` carries.
pub const NODE_PLACEHOLDER: &str = "__KUBERNETES_NODE_NAME__";

/// What to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallCfg {
    /// The plugin binary to copy (normally this executable).
    pub plugin: PathBuf,
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub conflist_name: String,
    /// The template's text.
    pub template: String,
    pub nodename: Option<String>,
}

/// What changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    pub plugin_written: bool,
    pub conflist_written: bool,
}

/// The conflist for `nodename`, checked as the plugin will read it.
pub fn render(template: &str, nodename: Option<&str>) -> Result<String, String> {
    let text = if template.contains(NODE_PLACEHOLDER) {
        let node = nodename.filter(|n| !n.is_empty()).ok_or_else(|| {
            format!("the network config names {NODE_PLACEHOLDER}, but no node name was given (NODENAME)")
        })?;
        template.replace(NODE_PLACEHOLDER, node)
    } else {
        template.to_string()
    };
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| format!("the network config is not JSON: {e}"))?;
    let plugins = doc
        .get("plugins")
        .and_then(Value::as_array)
        .ok_or("the network config: `plugins`: required, a list (a conflist)")?;
    let name = doc.get("name").cloned().unwrap_or(Value::Null);
    let version = doc.get("cniVersion").cloned().unwrap_or(Value::Null);
    let mut ours = 0;
    for (i, p) in plugins.iter().enumerate() {
        if p.get("type").and_then(Value::as_str) != Some(PLUGIN) {
            continue;
        }
        ours += 1;
        // As the runtime hands an entry to its plugin: with the list's name and version.
        let mut entry = p.clone();
        if let Some(m) = entry.as_object_mut() {
            m.insert("name".into(), name.clone());
            m.insert("cniVersion".into(), version.clone());
        }
        let bytes = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
        NetConf::parse(&bytes).map_err(|e| format!("the network config: plugins[{i}]: {e}"))?;
    }
    if ours == 0 {
        return Err(format!("the network config: no plugin of type {PLUGIN}"));
    }
    Ok(text)
}

/// Writes `content` to `dir/name` unless it is there already; true when written.
fn put(dir: &Path, name: &str, content: &[u8], mode: u32) -> Result<bool, String> {
    let dest = dir.join(name);
    if std::fs::read(&dest).ok().as_deref() == Some(content) {
        let perms = std::fs::metadata(&dest)
            .map_err(|e| e.to_string())?
            .permissions();
        if perms.mode() & 0o777 == mode {
            return Ok(false);
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dest)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", dest.display())
    })?;
    Ok(true)
}

/// Installs the plugin and the conflist (the conflist is checked first; nothing is written if
/// it is broken).
pub fn install(cfg: &InstallCfg) -> Result<Installed, String> {
    let conflist = render(&cfg.template, cfg.nodename.as_deref())?;
    let bin = std::fs::read(&cfg.plugin).map_err(|e| format!("{}: {e}", cfg.plugin.display()))?;
    Ok(Installed {
        plugin_written: put(&cfg.bin_dir, PLUGIN, &bin, 0o755)?,
        conflist_written: put(
            &cfg.conf_dir,
            &cfg.conflist_name,
            conflist.as_bytes(),
            0o644,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"{"name": "k8s-pod-network", "cniVersion": "1.0.0", "plugins": [
        {"type": "calico-cni-rs", "datastore_type": "file", "datastore_dir": "/var/lib/calico-rs",
         "nodename": "__KUBERNETES_NODE_NAME__", "ipam": {"type": "calico-ipam"}},
        {"type": "portmap", "capabilities": {"portMappings": true}}]}"#;

    fn cfg(dir: &Path, template: &str) -> InstallCfg {
        let plugin = dir.join("src-plugin");
        std::fs::write(&plugin, b"\x7fELF plugin v1").unwrap();
        InstallCfg {
            plugin,
            bin_dir: dir.join("bin"),
            conf_dir: dir.join("net.d"),
            conflist_name: "10-calico-rs.conflist".into(),
            template: template.into(),
            nodename: Some("node-1".into()),
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("crs-cni-install-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writes_once_then_only_what_changed() {
        let d = tempdir("once");
        let c = cfg(&d, TEMPLATE);
        let first = install(&c).unwrap();
        assert_eq!(
            first,
            Installed {
                plugin_written: true,
                conflist_written: true
            }
        );
        let conf = std::fs::read_to_string(d.join("net.d/10-calico-rs.conflist")).unwrap();
        assert!(conf.contains("\"nodename\": \"node-1\""), "{conf}");
        let bin = d.join("bin/calico-cni-rs");
        assert_eq!(
            std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(install(&c).unwrap(), Installed::default());
        std::fs::write(&c.plugin, b"\x7fELF plugin v2").unwrap();
        assert_eq!(
            install(&c).unwrap(),
            Installed {
                plugin_written: true,
                conflist_written: false
            }
        );
        assert_eq!(std::fs::read(&bin).unwrap(), b"\x7fELF plugin v2");
        let other = InstallCfg {
            nodename: Some("node-2".into()),
            ..c.clone()
        };
        assert_eq!(
            install(&other).unwrap(),
            Installed {
                plugin_written: false,
                conflist_written: true
            }
        );
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(d.join("net.d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["10-calico-rs.conflist"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The template the manifests ship passes the plugin's own check.
    #[test]
    fn the_manifests_template_renders() {
        let cm: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(include_str!("../../../manifests/30-configmap.yaml")).unwrap();
        let template = cm["data"]["cni_network_config"]
            .as_str()
            .expect("cni_network_config");
        let out = render(template, Some("node-7")).unwrap();
        assert!(out.contains("\"nodename\": \"node-7\""), "{out}");
    }

    #[test]
    fn a_broken_template_writes_nothing() {
        let d = tempdir("broken");
        for (template, want) in [
            ("{not json", "not JSON"),
            (
                r#"{"name": "x", "cniVersion": "1.0.0", "type": "calico-cni-rs"}"#,
                "plugins",
            ),
            (&TEMPLATE.replace("\"ipam\"", "\"ipma\""), "ipma"),
            (
                &TEMPLATE.replace("calico-cni-rs", "bridge"),
                "no plugin of type calico-cni-rs",
            ),
        ] {
            let err = install(&cfg(&d, template)).unwrap_err();
            assert!(err.contains(want), "{template}: {err}");
            assert!(
                !d.join("net.d").exists() && !d.join("bin").exists(),
                "{template}: wrote"
            );
        }
        let no_node = InstallCfg {
            nodename: None,
            ..cfg(&d, TEMPLATE)
        };
        assert!(install(&no_node).unwrap_err().contains("NODENAME"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
