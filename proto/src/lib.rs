//! The kubelet's gRPC APIs that a DRA driver serves, generated from the
//! `.proto` files next to this crate (wire names and field numbers as the
//! kubelet's own, see `../shared/docs/interfaces.md`).

/// `pluginregistration.Registration`: how the kubelet finds the plugin.
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

/// `k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin` and `...v1beta1.DRAPlugin`.
pub mod dra {
    pub mod v1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
    }
    pub mod v1beta1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");
    }
}

/// `v1.DRAResourceHealth` and `v1alpha1.DRAResourceHealth`: the device
/// health stream (the same messages, field for field).
pub mod health {
    pub mod v1 {
        tonic::include_proto!("v1");
    }
    pub mod v1alpha1 {
        tonic::include_proto!("v1alpha1");
    }
}

/// The service names a DRA plugin lists in `PluginInfo.supported_versions`.
pub mod services {
    pub const DRA_V1: &str = "v1.DRAPlugin";
    pub const DRA_V1BETA1: &str = "v1beta1.DRAPlugin";
    pub const HEALTH_V1: &str = "v1.DRAResourceHealth";
    pub const HEALTH_V1ALPHA1: &str = "v1alpha1.DRAResourceHealth";
    /// `PluginInfo.type` of a DRA plugin.
    pub const DRA_PLUGIN_TYPE: &str = "DRAPlugin";
}

/// Dialling a plugin's unix socket the way the kubelet does (`unix:<path>`,
/// no TLS): for the agent's own liveness checks and the kubelet-role tests.
pub mod client {
    use std::path::{Path, PathBuf};

    use hyper_util::rt::TokioIo;
    use tonic::transport::{Channel, Endpoint};

    /// A channel to the gRPC server on `socket`, connected now.
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Channel, tonic::transport::Error> {
        let path: PathBuf = socket.as_ref().to_path_buf();
        // The URI is required but unused: the connector dials the socket.
        Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }))
            .await
    }
}
