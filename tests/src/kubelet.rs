//! Playing the kubelet's part towards a DRA plugin, over the plugin's real
//! unix sockets: find the registration socket in the registry directory,
//! GetInfo, check it as the kubelet does, report the verdict, then call
//! NodePrepareResources / NodeUnprepareResources (v1 or v1beta1) and
//! watch the health stream.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use mock_accel_proto::dra::{v1, v1beta1};
use mock_accel_proto::health::{v1 as health, v1alpha1 as health_v1alpha1};
use mock_accel_proto::pluginregistration as reg;
use mock_accel_proto::services;
use tonic::transport::Channel;

pub use mock_accel_proto::client::connect;

/// Which DRA API version to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V1,
    V1beta1,
}

/// A claim as the kubelet names it.
#[derive(Debug, Clone)]
pub struct Claim {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl Claim {
    pub fn new(namespace: &str, name: &str, uid: &str) -> Claim {
        Claim {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }
}

/// One prepared device as the kubelet sees it (the fields both versions share).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub requests: Vec<String>,
    pub pool: String,
    pub device: String,
    pub cdi_ids: Vec<String>,
    pub share_id: Option<String>,
}

/// The registration sockets in `registry` whose name is not hidden, as
/// the kubelet's plugin watcher would pick them up.
pub fn registration_sockets(registry: &Path) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::FileTypeExt;
    let mut out = Vec::new();
    for e in std::fs::read_dir(registry)? {
        let e = e?;
        let hidden = e.file_name().to_string_lossy().starts_with('.');
        if !hidden && e.file_type()?.is_socket() {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// A registered plugin.
#[derive(Clone)]
pub struct Kubelet {
    pub info: reg::PluginInfo,
    registration: reg::registration_client::RegistrationClient<Channel>,
    dra: Channel,
}

impl Kubelet {
    /// GetInfo on `socket`, the kubelet's checks, NotifyRegistrationStatus
    /// with the verdict, and a channel to the DRA endpoint. Fails (after
    /// telling the plugin) when the kubelet would reject it.
    pub async fn register(socket: &Path) -> anyhow::Result<Kubelet> {
        let ch = connect(socket)
            .await
            .with_context(|| format!("dialing {}", socket.display()))?;
        let mut registration = reg::registration_client::RegistrationClient::new(ch);
        let info = registration.get_info(reg::InfoRequest {}).await?.into_inner();
        let verdict = check_info(&info);
        registration
            .notify_registration_status(reg::RegistrationStatus {
                plugin_registered: verdict.is_ok(),
                error: verdict.as_ref().err().cloned().unwrap_or_default(),
            })
            .await?;
        if let Err(e) = verdict {
            bail!("registration rejected: {e}");
        }
        let dra = connect(&info.endpoint)
            .await
            .with_context(|| format!("dialing the DRA endpoint {}", info.endpoint))?;
        Ok(Kubelet {
            info,
            registration,
            dra,
        })
    }

    /// Tells the plugin the kubelet rejected it.
    pub async fn reject(socket: &Path, why: &str) -> anyhow::Result<()> {
        let mut registration = reg::registration_client::RegistrationClient::new(connect(socket).await?);
        registration
            .notify_registration_status(reg::RegistrationStatus {
                plugin_registered: false,
                error: why.into(),
            })
            .await?;
        Ok(())
    }

    /// The kubelet's periodic GetInfo.
    pub async fn get_info(&mut self) -> anyhow::Result<reg::PluginInfo> {
        Ok(self.registration.get_info(reg::InfoRequest {}).await?.into_inner())
    }

    /// NodePrepareResources: per claim UID, the devices or the error.
    pub async fn prepare(
        &self,
        api: Api,
        claims: &[Claim],
    ) -> anyhow::Result<BTreeMap<String, Result<Vec<Device>, String>>> {
        let out = match api {
            Api::V1 => prepare_v1(self.dra.clone(), claims).await?,
            Api::V1beta1 => prepare_v1beta1(self.dra.clone(), claims).await?,
        };
        check_every_claim_answered(claims, &out)?;
        Ok(out)
    }

    /// NodeUnprepareResources: per claim UID, `Ok` or the error.
    pub async fn unprepare(&self, api: Api, claims: &[Claim]) -> anyhow::Result<BTreeMap<String, Result<(), String>>> {
        let out = match api {
            Api::V1 => unprepare_v1(self.dra.clone(), claims).await?,
            Api::V1beta1 => unprepare_v1beta1(self.dra.clone(), claims).await?,
        };
        check_every_claim_answered(claims, &out)?;
        Ok(out)
    }

    /// The health stream (NodeWatchResources) as kubelets from 1.37 call
    /// it: `v1.DRAResourceHealth`.
    pub async fn watch_health(&self) -> anyhow::Result<tonic::Streaming<health::NodeWatchResourcesResponse>> {
        Ok(
            health::dra_resource_health_client::DraResourceHealthClient::new(self.dra.clone())
                .node_watch_resources(health::NodeWatchResourcesRequest {})
                .await?
                .into_inner(),
        )
    }

    /// The health stream as older kubelets call it: `v1alpha1.DRAResourceHealth`.
    pub async fn watch_health_v1alpha1(
        &self,
    ) -> anyhow::Result<tonic::Streaming<health_v1alpha1::NodeWatchResourcesResponse>> {
        Ok(
            health_v1alpha1::dra_resource_health_client::DraResourceHealthClient::new(self.dra.clone())
                .node_watch_resources(health_v1alpha1::NodeWatchResourcesRequest {})
                .await?
                .into_inner(),
        )
    }
}

/// The two DRA calls of one API version, in the version-neutral types (the
/// request and response types differ only by module; v1 adds `share_id`).
macro_rules! dra_calls {
    ($prepare:ident, $unprepare:ident, $m:ident, |$d:ident| $share:expr) => {
        async fn $prepare(
            dra: Channel,
            claims: &[Claim],
        ) -> anyhow::Result<BTreeMap<String, Result<Vec<Device>, String>>> {
            let resp = $m::dra_plugin_client::DraPluginClient::new(dra)
                .node_prepare_resources($m::NodePrepareResourcesRequest {
                    claims: claims
                        .iter()
                        .map(|c| $m::Claim {
                            namespace: c.namespace.clone(),
                            uid: c.uid.clone(),
                            name: c.name.clone(),
                        })
                        .collect(),
                })
                .await?
                .into_inner();
            Ok(resp
                .claims
                .into_iter()
                .map(|(uid, r)| {
                    let v = if r.error.is_empty() {
                        Ok(r.devices
                            .into_iter()
                            .map(|$d| Device {
                                share_id: $share,
                                requests: $d.request_names,
                                pool: $d.pool_name,
                                device: $d.device_name,
                                cdi_ids: $d.cdi_device_ids,
                            })
                            .collect())
                    } else {
                        Err(r.error)
                    };
                    (uid, v)
                })
                .collect())
        }

        async fn $unprepare(dra: Channel, claims: &[Claim]) -> anyhow::Result<BTreeMap<String, Result<(), String>>> {
            Ok($m::dra_plugin_client::DraPluginClient::new(dra)
                .node_unprepare_resources($m::NodeUnprepareResourcesRequest {
                    claims: claims
                        .iter()
                        .map(|c| $m::Claim {
                            namespace: c.namespace.clone(),
                            uid: c.uid.clone(),
                            name: c.name.clone(),
                        })
                        .collect(),
                })
                .await?
                .into_inner()
                .claims
                .into_iter()
                .map(|(u, r)| (u, if r.error.is_empty() { Ok(()) } else { Err(r.error) }))
                .collect())
        }
    };
}

dra_calls!(prepare_v1, unprepare_v1, v1, |d| d.share_id);
dra_calls!(prepare_v1beta1, unprepare_v1beta1, v1beta1, |d| None);

/// The kubelet's checks of a DRA plugin's info.
pub fn check_info(info: &reg::PluginInfo) -> Result<(), String> {
    if info.r#type != services::DRA_PLUGIN_TYPE {
        return Err(format!("type {:?} is not {}", info.r#type, services::DRA_PLUGIN_TYPE));
    }
    if info.name.is_empty() {
        return Err("empty driver name".into());
    }
    if !info.endpoint.starts_with('/') {
        return Err(format!("endpoint {:?} is not an absolute path", info.endpoint));
    }
    let known = [services::DRA_V1, services::DRA_V1BETA1];
    if !info.supported_versions.iter().any(|v| known.contains(&v.as_str())) {
        return Err(format!(
            "none of the supported versions {:?} is a DRA service this kubelet knows",
            info.supported_versions
        ));
    }
    Ok(())
}

fn check_every_claim_answered<T>(claims: &[Claim], out: &BTreeMap<String, T>) -> anyhow::Result<()> {
    for c in claims {
        if !out.contains_key(&c.uid) {
            bail!("the response has no entry for claim {} (uid {})", c.name, c.uid);
        }
    }
    Ok(())
}
