//! The gRPC services the kubelet calls: registration, DRA v1 and v1beta1
//! (one implementation, [`Driver`], behind both), and the health stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::Stream;
use metrics::{counter, gauge};
use mock_accel_proto::dra::{v1, v1beta1};
use mock_accel_proto::health::{v1 as health_v1, v1alpha1 as health};
use mock_accel_proto::pluginregistration as reg;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};
use tracing::{error, info};

use super::checkpoint::PreparedDevice;
use super::driver::{ClaimError, Driver};
use crate::admin;
use crate::claims::ClaimRef;
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

/// `v1.DRAResourceHealth` and `v1alpha1.DRAResourceHealth` (the kubelet
/// picks the newest it knows of those advertised): the complete list now,
/// then on every change.
#[derive(Clone)]
pub struct HealthService(pub watch::Receiver<Arc<Vec<health::DeviceHealth>>>);

type HealthStream<R> = Pin<Box<dyn Stream<Item = Result<R, Status>> + Send>>;

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

impl HealthService {
    /// Each list as `to` makes it a response of API version `api`.
    fn stream<R: Send + 'static>(&self, api: &'static str, to: fn(&[health::DeviceHealth]) -> R) -> HealthStream<R> {
        counter!(m::PLUGIN_REQUESTS, "api" => api, "method" => "NodeWatchResources").increment(1);
        let open = StreamGauge::new();
        Box::pin(WatchStream::new(self.0.clone()).map(move |list| {
            let _ = &open;
            Ok(to(&list))
        }))
    }
}

/// A device's health in v1's messages: the same fields and numbers as
/// v1alpha1's.
fn health_v1(d: &health::DeviceHealth) -> health_v1::DeviceHealth {
    health_v1::DeviceHealth {
        device: d.device.as_ref().map(|id| health_v1::DeviceIdentifier {
            pool_name: id.pool_name.clone(),
            device_name: id.device_name.clone(),
        }),
        health: d.health,
        last_updated_time: d.last_updated_time,
        health_check_timeout_seconds: d.health_check_timeout_seconds,
        message: d.message.clone(),
    }
}

#[tonic::async_trait]
impl health_v1::dra_resource_health_server::DraResourceHealth for HealthService {
    type NodeWatchResourcesStream = HealthStream<health_v1::NodeWatchResourcesResponse>;

    async fn node_watch_resources(
        &self,
        _: Request<health_v1::NodeWatchResourcesRequest>,
    ) -> Result<Response<Self::NodeWatchResourcesStream>, Status> {
        Ok(Response::new(self.stream("v1", |list| {
            health_v1::NodeWatchResourcesResponse {
                devices: list.iter().map(health_v1).collect(),
            }
        })))
    }
}

#[tonic::async_trait]
impl health::dra_resource_health_server::DraResourceHealth for HealthService {
    type NodeWatchResourcesStream = HealthStream<health::NodeWatchResourcesResponse>;

    async fn node_watch_resources(
        &self,
        _: Request<health::NodeWatchResourcesRequest>,
    ) -> Result<Response<Self::NodeWatchResourcesStream>, Status> {
        Ok(Response::new(self.stream("v1alpha1", |list| {
            health::NodeWatchResourcesResponse { devices: list.to_vec() }
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// v1 and v1alpha1 are one message on the wire: what v1 sends is what
    /// v1alpha1 sent, byte for byte.
    #[test]
    fn health_v1_is_v1alpha1_on_the_wire() {
        let alpha = health::NodeWatchResourcesResponse {
            devices: vec![health::DeviceHealth {
                device: Some(health::DeviceIdentifier {
                    pool_name: "node-a".into(),
                    device_name: "mock1-vf0".into(),
                }),
                health: health::HealthStatus::Unhealthy as i32,
                last_updated_time: 1_764_000_000,
                health_check_timeout_seconds: 30,
                message: "failed (health=failed)".into(),
            }],
        };
        let v1 = health_v1::NodeWatchResourcesResponse {
            devices: alpha.devices.iter().map(health_v1).collect(),
        };
        assert_eq!(v1.encode_to_vec(), alpha.encode_to_vec());
        assert_eq!(v1.devices[0].health(), health_v1::HealthStatus::Unhealthy);
    }
}
