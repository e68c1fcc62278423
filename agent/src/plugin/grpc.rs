//! The gRPC services the kubelet calls: registration, DRA v1 and v1beta1
//! (one implementation, [`Driver`], behind both), and the health stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::Stream;
use metrics::{counter, gauge};
use mock_accel_proto::dra::{v1, v1beta1};
use mock_accel_proto::health::v1alpha1 as health;
use mock_accel_proto::pluginregistration as reg;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};
use tracing::{error, info};

use super::checkpoint::PreparedDevice;
use super::driver::{ClaimError, ClaimRef, Driver};
use crate::admin;
use crate::metrics as m;

/// `pluginregistration.Registration`.
#[derive(Clone)]
pub struct Registration {
    pub info: reg::PluginInfo,
    pub health: Arc<admin::Health>,
}

#[tonic::async_trait]
impl reg::registration_server::Registration for Registration {
    async fn get_info(&self, _: Request<reg::InfoRequest>) -> Result<Response<reg::PluginInfo>, Status> {
        counter!(m::PLUGIN_REQUESTS, "api" => "registration", "method" => "GetInfo").increment(1);
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        req: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        counter!(m::PLUGIN_REQUESTS, "api" => "registration", "method" => "NotifyRegistrationStatus").increment(1);
        let st = req.into_inner();
        self.health.registered.store(st.plugin_registered, Ordering::SeqCst);
        gauge!(m::PLUGIN_REGISTERED).set(if st.plugin_registered { 1.0 } else { 0.0 });
        if st.plugin_registered {
            counter!(m::REGISTRATIONS, "result" => "accepted").increment(1);
            info!(driver = %self.info.name, endpoint = %self.info.endpoint, "the kubelet registered the plugin");
        } else {
            counter!(m::REGISTRATIONS, "result" => "rejected").increment(1);
            error!(driver = %self.info.name, error = %st.error, "the kubelet REJECTED the plugin registration: pods cannot get devices on this node");
        }
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}

/// One DRA service version over [`Driver`]: the same calls, the version's
/// types, and how a prepared device looks in that version.
macro_rules! dra_service {
    ($name:ident, $pb:ident, $api:literal, $device:expr) => {
        #[doc = concat!("`k8s.io.kubelet.pkg.apis.dra.", $api, ".DRAPlugin`.")]
        #[derive(Clone)]
        pub struct $name(pub Arc<Driver>);

        #[tonic::async_trait]
        impl $pb::dra_plugin_server::DraPlugin for $name {
            async fn node_prepare_resources(
                &self,
                req: Request<$pb::NodePrepareResourcesRequest>,
            ) -> Result<Response<$pb::NodePrepareResourcesResponse>, Status> {
                counter!(m::PLUGIN_REQUESTS, "api" => $api, "method" => "NodePrepareResources").increment(1);
                let refs: Vec<ClaimRef> = req.into_inner().claims.into_iter().map(|c| ClaimRef {
                    namespace: c.namespace,
                    name: c.name,
                    uid: c.uid,
                }).collect();
                let device: fn(PreparedDevice) -> $pb::Device = $device;
                let claims = self
                    .0
                    .prepare(&refs)
                    .await
                    .into_iter()
                    .map(|(uid, r)| {
                        let resp = match r {
                            Ok(devices) => $pb::NodePrepareResourceResponse {
                                devices: devices.into_iter().map(device).collect(),
                                error: String::new(),
                            },
                            Err(e) => $pb::NodePrepareResourceResponse {
                                devices: vec![],
                                error: e.message,
                            },
                        };
                        (uid, resp)
                    })
                    .collect();
                Ok(Response::new($pb::NodePrepareResourcesResponse { claims }))
            }

            async fn node_unprepare_resources(
                &self,
                req: Request<$pb::NodeUnprepareResourcesRequest>,
            ) -> Result<Response<$pb::NodeUnprepareResourcesResponse>, Status> {
                counter!(m::PLUGIN_REQUESTS, "api" => $api, "method" => "NodeUnprepareResources").increment(1);
                let refs: Vec<ClaimRef> = req.into_inner().claims.into_iter().map(|c| ClaimRef {
                    namespace: c.namespace,
                    name: c.name,
                    uid: c.uid,
                }).collect();
                let claims = self
                    .0
                    .unprepare(&refs)
                    .await
                    .into_iter()
                    .map(|(uid, r)| {
                        let error = r.err().map(|e: ClaimError| e.message).unwrap_or_default();
                        (uid, $pb::NodeUnprepareResourceResponse { error })
                    })
                    .collect();
                Ok(Response::new($pb::NodeUnprepareResourcesResponse { claims }))
            }
        }
    };
}

dra_service!(DraV1, v1, "v1", |d| v1::Device {
    request_names: d.requests,
    pool_name: d.pool,
    device_name: d.device,
    cdi_device_ids: vec![d.cdi_device_id],
    share_id: d.share_id,
});

// v1beta1 has no share IDs: shared devices still work, the kubelet just
// cannot tell the shares apart.
dra_service!(DraV1beta1, v1beta1, "v1beta1", |d| v1beta1::Device {
    request_names: d.requests,
    pool_name: d.pool,
    device_name: d.device,
    cdi_device_ids: vec![d.cdi_device_id],
});

/// `v1alpha1.DRAResourceHealth`: the complete list now, then on every change.
#[derive(Clone)]
pub struct HealthService(pub watch::Receiver<Arc<Vec<health::DeviceHealth>>>);

type HealthStream = Pin<Box<dyn Stream<Item = Result<health::NodeWatchResourcesResponse, Status>> + Send>>;

/// Counts open health streams.
struct StreamGauge;

impl StreamGauge {
    fn new() -> StreamGauge {
        gauge!(m::HEALTH_STREAMS).increment(1.0);
        StreamGauge
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        gauge!(m::HEALTH_STREAMS).decrement(1.0);
    }
}

#[tonic::async_trait]
impl health::dra_resource_health_server::DraResourceHealth for HealthService {
    type NodeWatchResourcesStream = HealthStream;

    async fn node_watch_resources(
        &self,
        _: Request<health::NodeWatchResourcesRequest>,
    ) -> Result<Response<HealthStream>, Status> {
        counter!(m::PLUGIN_REQUESTS, "api" => "v1alpha1", "method" => "NodeWatchResources").increment(1);
        let open = StreamGauge::new();
        let stream = WatchStream::new(self.0.clone()).map(move |list| {
            let _ = &open;
            Ok(health::NodeWatchResourcesResponse {
                devices: list.as_ref().clone(),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
