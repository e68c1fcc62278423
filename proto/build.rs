//! Generates the gRPC code from proto/ with protoc (scripts/setup.sh
//! installs it): servers for the agent, clients for the kubelet-role tests.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/pluginregistration.proto",
        "proto/dra_v1.proto",
        "proto/dra_v1beta1.proto",
        "proto/dra_health_v1alpha1.proto",
        "proto/dra_health_v1.proto",
    ];
    tonic_prost_build::configure().compile_protos(&protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
