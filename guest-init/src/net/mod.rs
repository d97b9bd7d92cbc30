//! The network the contract names, on eth0: a static address or a DHCP lease, each with a
//! default route, configured over rtnetlink (`link`) and DHCPv4 (`dhcp`); or no IP network
//! at all, the service reached over vsock (`vsock`).

mod dhcp;
mod link;
pub mod vsock;

pub use dhcp::configure_dhcp;
pub use link::configure_static;
