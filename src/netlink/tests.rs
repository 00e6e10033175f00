//! Unit tests of the reply handling, and privileged tests of every operation. The privileged
//! tests run as root, each in a fresh network namespace of the test harness (testkit), which
//! deletes it again (also on panic). Not root: they fail, unless `WEFT_SKIP_PRIVILEGED=1`.
use super::request::{align4, ext_ack_text, Failure, NLMSGERR_ATTR_MSG, NLMSG_HEADER_LEN};
use super::*;
use control::lease::format_mac;
use netlink_packet_core::{NLM_F_ACK_TLVS, NLM_F_CAPPED};
use nix::libc;
use std::fmt;
use std::io;
use testkit::netns as harness;

const UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const VTEP_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x01, 0x0f, 0x00];
const PEER_MAC: [u8; 6] = [0x0e, 0x11, 0x22, 0x33, 0x44, 0x55];
const PEER_MAC2: [u8; 6] = [0x0e, 0x66, 0x77, 0x88, 0x99, 0xaa];

/// The test harness's namespace (unique name, deleted on drop, also on panic), with a
/// [`Netlink`] opened inside it for each step.
struct Netns(harness::Netns);

impl Netns {
    /// Creates the namespace, or returns `None` when privileged tests are skipped.
    fn new(test: &str) -> Option<Netns> {
        harness::Netns::for_test(test, "nl").map(Netns)
    }

    /// Creates the namespace with veth underlay `ul0` (192.0.2.1/24, up; peer `ul1` up).
    fn with_underlay(test: &str) -> Option<Netns> {
        let ns = Netns::new(test)?;
        ns.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"]);
        ns.ip(&["link", "set", "ul0", "up"]);
        ns.ip(&["link", "set", "ul1", "up"]);
        ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "ul0"]);
        Some(ns)
    }

    /// Runs `f` with a [`Netlink`] opened inside the namespace, on a thread that entered it.
    fn run<R: Send>(&self, f: impl FnOnce(&mut Netlink) -> R + Send) -> R {
        self.0
            .within(|| f(&mut Netlink::new().expect("netlink socket")))
            .expect("enter the namespace")
    }

    /// `ip -n <ns> args...`, panicking on failure; returns stdout.
    fn ip(&self, args: &[&str]) -> String {
        self.0.ip(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `ip netns exec <ns> args...` (for `bridge`), panicking on failure; returns stdout.
    fn exec(&self, args: &[&str]) -> String {
        self.0.run(args).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// flannel's device: `flannel.1`, VNI 1, local 192.0.2.1, dev ul0, default port, nolearning.
fn flannel_spec(underlay_index: u32) -> VxlanSpec {
    VxlanSpec {
        name: "flannel.1".to_string(),
        vni: 1,
        local: UNDERLAY_IP.into(),
        underlay_index,
        port: None,
        gbp: false,
        learning: false,
        mtu: 1450,
        mac: Some(VTEP_MAC),
    }
}

/// Creates flannel's vxlan device on `ul0`, sets it up and returns its index.
fn flannel_device(nl: &mut Netlink) -> u32 {
    let ul = nl.link_by_name("ul0").unwrap().expect("ul0 exists");
    nl.add_vxlan(&flannel_spec(ul.index)).unwrap();
    let index = nl
        .link_by_name("flannel.1")
        .unwrap()
        .expect("created")
        .index;
    nl.set_link_up(index).unwrap();
    index
}

fn errno_of<T: fmt::Debug>(r: io::Result<T>) -> (i32, String) {
    let e = r.expect_err("the kernel should refuse this");
    (errno(&e).expect("errno kept"), e.to_string())
}

#[test]
fn vxlan_device_is_created_and_read_back_as_flannel_does() {
    let ns = Netns::with_underlay("vxlan_device_is_created_and_read_back_as_flannel_does");
    let Some(ns) = ns else {
        return;
    };
    ns.run(|nl| {
        assert_eq!(nl.link_by_name("flannel.1").unwrap(), None);
        let ul = nl.link_by_name("ul0").unwrap().expect("ul0 exists");
        assert_eq!(ul.kind.as_deref(), Some("veth"));
        let spec = flannel_spec(ul.index);
        nl.add_vxlan(&spec).unwrap();

        let link = nl.link_by_name("flannel.1").unwrap().expect("created");
        assert_eq!(link.name, "flannel.1");
        assert_eq!(link.kind.as_deref(), Some("vxlan"));
        assert_eq!(
            link.mac,
            Some(VTEP_MAC),
            "the MAC given at creation is kept"
        );
        assert_eq!(link.mtu, 1450);
        assert!(!link.up);
        let expected = VxlanAttrs {
            vni: 1,
            local: Some(UNDERLAY_IP.into()),
            link: Some(ul.index),
            port: VXLAN_DEFAULT_PORT,
            learning: false,
            gbp: false,
        };
        assert_eq!(link.vxlan, Some(expected));
        assert!(expected.matches(&spec));
        let shown = ns.ip(&["-d", "link", "show", "flannel.1"]);
        for part in [
            "vxlan id 1 local 192.0.2.1 dev ul0",
            "dstport 8472",
            "nolearning",
        ] {
            assert!(shown.contains(part), "{part:?} missing in {shown}");
        }
        assert!(!shown.contains("gbp"), "{shown}");

        let (e, msg) = errno_of(nl.add_vxlan(&spec));
        assert_eq!(e, libc::EEXIST);
        assert_eq!(
            msg,
            "creating vxlan device flannel.1 (vni 1, local 192.0.2.1, dev ul0, dstport 8472): \
             File exists (os error 17)"
        );

        let spec2 = VxlanSpec {
            name: "vx.2".to_string(),
            vni: 2,
            port: Some(4789),
            gbp: true,
            learning: true,
            mac: None,
            ..spec.clone()
        };
        nl.add_vxlan(&spec2).unwrap();
        let link2 = nl.link_by_name("vx.2").unwrap().expect("created");
        let attrs2 = link2.vxlan.expect("vxlan attributes");
        assert_eq!(
            attrs2,
            VxlanAttrs {
                vni: 2,
                local: Some(UNDERLAY_IP.into()),
                link: Some(ul.index),
                port: 4789,
                learning: true,
                gbp: true,
            }
        );
        assert!(attrs2.matches(&spec2) && !attrs2.matches(&spec));
        assert!(link2.mac.is_some_and(|m| m != VTEP_MAC && m[0] & 0x01 == 0));
        let shown2 = ns.ip(&["-d", "link", "show", "vx.2"]);
        for part in ["vxlan id 2", "dstport 4789", " gbp"] {
            assert!(shown2.contains(part), "{part:?} missing in {shown2}");
        }
        assert!(!shown2.contains("nolearning"), "{shown2}");

        nl.set_mtu(link.index, 1400).unwrap();
        nl.set_link_up(link.index).unwrap();
        let link = nl.link_by_name("flannel.1").unwrap().expect("still there");
        assert!(link.up);
        assert_eq!(link.mtu, 1400);
        assert_eq!(nl.link_by_index(link.index).unwrap().as_ref(), Some(&link));

        let names: Vec<String> = nl.links().unwrap().into_iter().map(|l| l.name).collect();
        for name in ["lo", "ul0", "ul1", "flannel.1", "vx.2"] {
            assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        }

        nl.delete_link(link.index).unwrap();
        nl.delete_link(link2.index).unwrap();
        assert_eq!(nl.link_by_name("flannel.1").unwrap(), None);
        let names: Vec<String> = nl.links().unwrap().into_iter().map(|l| l.name).collect();
        assert!(!names.iter().any(|n| n == "flannel.1" || n == "vx.2"));
        let (e, msg) = errno_of(nl.delete_link(link.index));
        assert_eq!(e, libc::ENODEV);
        assert!(
            msg.starts_with(&format!("deleting link ifindex {}: ", link.index)),
            "{msg}"
        );
    });
}

#[test]
fn addresses_are_added_listed_and_deleted() {
    let ns = Netns::with_underlay("addresses_are_added_listed_and_deleted");
    let Some(ns) = ns else {
        return;
    };
    ns.run(|nl| {
        let index = flannel_device(nl);
        let lease = Ipv4Addr::new(10, 1, 15, 0);
        assert_eq!(nl.addresses(index).unwrap(), vec![]);
        nl.add_address(index, lease, 32).unwrap();
        nl.add_address(index, lease, 32).unwrap(); // EEXIST tolerated
        assert_eq!(nl.addresses(index).unwrap(), vec![(lease, 32)]);
        let ul = nl.link_by_name("ul0").unwrap().expect("ul0").index;
        assert_eq!(nl.addresses(ul).unwrap(), vec![(UNDERLAY_IP, 24)]);
        let shown = ns.ip(&["-4", "addr", "show", "dev", "flannel.1"]);
        assert!(shown.contains("inet 10.1.15.0/32"), "{shown}");

        nl.delete_address(index, lease, 32).unwrap();
        assert_eq!(nl.addresses(index).unwrap(), vec![]);
        nl.delete_address(index, lease, 32).unwrap(); // already gone
    });
}

#[test]
fn neighbours_are_replaced_idempotently_and_deleted() {
    let ns = Netns::with_underlay("neighbours_are_replaced_idempotently_and_deleted");
    let Some(ns) = ns else {
        return;
    };
    ns.run(|nl| {
        let index = flannel_device(nl);
        let peer = Ipv4Addr::new(10, 1, 16, 0);
        nl.replace_neigh(index, peer, PEER_MAC).unwrap();
        nl.replace_neigh(index, peer, PEER_MAC).unwrap();
        assert_eq!(nl.neighbours(index).unwrap(), vec![(peer, PEER_MAC)]);
        nl.replace_neigh(index, peer, PEER_MAC2).unwrap();
        assert_eq!(nl.neighbours(index).unwrap(), vec![(peer, PEER_MAC2)]);
        let shown = ns.ip(&["neigh", "show", "dev", "flannel.1"]);
        let want = format!("10.1.16.0 lladdr {} PERMANENT", format_mac(&PEER_MAC2));
        assert!(shown.contains(&want), "{want:?} missing in {shown}");

        nl.delete_neigh(index, peer).unwrap();
        assert_eq!(nl.neighbours(index).unwrap(), vec![]);
        nl.delete_neigh(index, peer).unwrap(); // ENOENT tolerated
    });
}

#[test]
fn fdb_entries_are_self_permanent_with_dst() {
    let ns = Netns::with_underlay("fdb_entries_are_self_permanent_with_dst");
    let Some(ns) = ns else {
        return;
    };
    ns.run(|nl| {
        let index = flannel_device(nl);
        let (p1, p2) = (Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 3));
        let ours = |nl: &mut Netlink| -> Vec<([u8; 6], Option<Ipv4Addr>)> {
            let all = nl.fdb(index).unwrap();
            all.into_iter().filter(|(m, _)| *m == PEER_MAC).collect()
        };
        nl.replace_fdb(index, PEER_MAC, p1).unwrap();
        nl.replace_fdb(index, PEER_MAC, p1).unwrap();
        assert_eq!(ours(nl), vec![(PEER_MAC, Some(p1))]);
        let shown = ns.exec(&["bridge", "fdb", "show", "dev", "flannel.1"]);
        let want = format!("{} dst 192.0.2.2 self permanent", format_mac(&PEER_MAC));
        assert!(
            shown.lines().any(|l| l.trim() == want),
            "{want:?} missing in {shown}"
        );

        // Replace moves the entry to the new remote rather than adding a second one.
        nl.replace_fdb(index, PEER_MAC, p2).unwrap();
        assert_eq!(ours(nl), vec![(PEER_MAC, Some(p2))]);
        nl.delete_fdb(index, PEER_MAC, p1).unwrap(); // a remote it lacks: the kernel says Ok
        assert_eq!(ours(nl), vec![(PEER_MAC, Some(p2))]);
        nl.delete_fdb(index, PEER_MAC, p2).unwrap();
        assert_eq!(ours(nl), vec![]);
        nl.delete_fdb(index, PEER_MAC, p2).unwrap();
        let shown = ns.exec(&["bridge", "fdb", "show", "dev", "flannel.1"]);
        assert!(!shown.contains(&format_mac(&PEER_MAC)), "{shown}");
    });
}

#[test]
fn routes_are_replaced_filtered_by_protocol_and_deleted() {
    let ns = Netns::with_underlay("routes_are_replaced_filtered_by_protocol_and_deleted");
    let Some(ns) = ns else {
        return;
    };
    ns.ip(&[
        "route",
        "add",
        "10.9.0.0/16",
        "via",
        "192.0.2.254",
        "dev",
        "ul0",
        "proto",
        "static",
    ]);
    ns.run(|nl| {
        let vx = flannel_device(nl);
        let ul = nl.link_by_name("ul0").unwrap().expect("ul0").index;
        let vxlan_route = RouteSpec {
            dst: Ipv4Addr::new(10, 1, 16, 0),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(10, 1, 16, 0)),
            oif: vx,
            onlink: true,
            protocol: RTPROT_WEFT,
        };
        let hostgw_route = RouteSpec {
            dst: Ipv4Addr::new(10, 1, 17, 0),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(192, 0, 2, 2)),
            oif: ul,
            onlink: false,
            protocol: RTPROT_WEFT,
        };
        for r in [vxlan_route, hostgw_route, vxlan_route, hostgw_route] {
            nl.replace_route(&r).unwrap();
        }
        let mut ours = nl.routes(Some(RTPROT_WEFT)).unwrap();
        ours.sort_by_key(|r| r.dst);
        assert_eq!(ours, vec![vxlan_route, hostgw_route]);
        let shown = ns.ip(&["route", "show", "proto", "153"]);
        for want in [
            "10.1.16.0/24 via 10.1.16.0 dev flannel.1 onlink",
            "10.1.17.0/24 via 192.0.2.2 dev ul0",
        ] {
            assert!(
                shown.lines().any(|l| l.trim() == want),
                "{want:?} missing in {shown}"
            );
        }

        let all = nl.routes(None).unwrap();
        assert!(all.iter().any(|r| r.dst == Ipv4Addr::new(10, 9, 0, 0)
            && r.protocol == 4
            && r.gateway == Some(Ipv4Addr::new(192, 0, 2, 254))));
        assert!(all.iter().any(|r| r.dst == Ipv4Addr::new(192, 0, 2, 0)
            && r.prefix == 24
            && r.gateway.is_none()
            && r.oif == ul));
        assert!(
            all.iter().all(|r| r.dst != UNDERLAY_IP),
            "local table left out"
        );

        // Replacing with another gateway changes the route in place.
        let moved = RouteSpec {
            gateway: Some(Ipv4Addr::new(192, 0, 2, 3)),
            ..hostgw_route
        };
        nl.replace_route(&moved).unwrap();
        let mut ours = nl.routes(Some(RTPROT_WEFT)).unwrap();
        ours.sort_by_key(|r| r.dst);
        assert_eq!(ours, vec![vxlan_route, moved]);

        nl.delete_route(&vxlan_route).unwrap();
        nl.delete_route(&moved).unwrap();
        assert_eq!(nl.routes(Some(RTPROT_WEFT)).unwrap(), vec![]);
        nl.delete_route(&moved).unwrap(); // ESRCH tolerated
        let foreign = RouteSpec {
            dst: Ipv4Addr::new(10, 9, 0, 0),
            prefix: 16,
            gateway: None,
            oif: 0,
            onlink: false,
            protocol: RTPROT_WEFT,
        };
        nl.delete_route(&foreign).unwrap(); // another protocol's route is not ours to delete
        assert!(nl
            .routes(Some(4))
            .unwrap()
            .iter()
            .any(|r| r.dst == foreign.dst));
    });
}

#[test]
fn route_get_tells_on_link_from_via_gateway() {
    let ns = Netns::with_underlay("route_get_tells_on_link_from_via_gateway");
    let Some(ns) = ns else {
        return;
    };
    ns.ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "192.0.2.254",
        "dev",
        "ul0",
    ]);
    ns.run(|nl| {
        let ul = nl.link_by_name("ul0").unwrap().expect("ul0").index;
        let on_link = nl.route_get(Ipv4Addr::new(192, 0, 2, 7)).unwrap();
        assert_eq!(on_link.gateway, None);
        assert_eq!(on_link.oif, ul);
        assert_eq!(
            (on_link.dst, on_link.prefix),
            (Ipv4Addr::new(192, 0, 2, 7), 32)
        );
        let routed = nl.route_get(Ipv4Addr::new(198, 51, 100, 9)).unwrap();
        assert_eq!(routed.gateway, Some(Ipv4Addr::new(192, 0, 2, 254)));
        assert_eq!(routed.oif, ul);
        let (e, msg) = errno_of(nl.route_get(Ipv4Addr::new(203, 0, 113, 5)));
        assert_eq!(e, libc::ENETUNREACH);
        assert!(msg.starts_with("looking up route to 203.0.113.5: Network is unreachable"));
    });
}

#[test]
fn gateway_not_on_link_is_enetunreach_unless_onlink() {
    let ns = Netns::with_underlay("gateway_not_on_link_is_enetunreach_unless_onlink");
    let Some(ns) = ns else {
        return;
    };
    ns.run(|nl| {
        let ul = nl.link_by_name("ul0").unwrap().expect("ul0").index;
        let mut r = RouteSpec {
            dst: Ipv4Addr::new(10, 1, 18, 0),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(203, 0, 113, 1)),
            oif: ul,
            onlink: false,
            protocol: RTPROT_WEFT,
        };
        let e = nl.replace_route(&r).expect_err("gateway is not on-link");
        assert_eq!(errno(&e), Some(libc::ENETUNREACH));
        assert_eq!(e.kind(), io::ErrorKind::NetworkUnreachable);
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "replacing route 10.1.18.0/24 via 203.0.113.1 dev ul0 proto 153: \
                 Network is unreachable (os error 101)"
            ),
            "{msg}"
        );
        eprintln!("kernel error as reported: {msg}");

        r.onlink = true;
        nl.replace_route(&r).unwrap();
        let got = nl.route_get(Ipv4Addr::new(10, 1, 18, 5)).unwrap();
        assert_eq!((got.gateway, got.oif), (r.gateway, ul));
        nl.delete_route(&r).unwrap();
    });
}

#[test]
fn dumps_spanning_many_datagrams_are_complete() {
    let ns = Netns::with_underlay("dumps_spanning_many_datagrams_are_complete");
    let Some(ns) = ns else {
        return;
    };
    ns.run(|nl| {
        let ul = nl.link_by_name("ul0").unwrap().expect("ul0").index;
        let routes: Vec<RouteSpec> = (0..2000u32)
            .map(|i| RouteSpec {
                dst: Ipv4Addr::from(0x0a64_0000 + i),
                prefix: 32,
                gateway: None,
                oif: ul,
                onlink: false,
                protocol: RTPROT_WEFT,
            })
            .collect();
        for r in &routes {
            nl.replace_route(r).unwrap();
        }
        let mut listed = nl.routes(Some(RTPROT_WEFT)).unwrap();
        listed.sort_by_key(|r| r.dst);
        assert_eq!(listed, routes);
        for r in &routes {
            nl.delete_route(r).unwrap();
        }
        assert_eq!(nl.routes(Some(RTPROT_WEFT)).unwrap(), vec![]);
    });
}

#[test]
fn the_overlay_route_through_a_device_is_static_and_scope_global() {
    let ns = Netns::with_underlay("the_overlay_route_through_a_device_is_static_and_scope_global");
    let Some(ns) = ns else {
        return;
    };
    ns.run(|nl| {
        let ul = nl.link_by_name("ul0").unwrap().expect("ul0").index;
        let route = RouteSpec {
            dst: Ipv4Addr::new(10, 1, 0, 0),
            prefix: 16,
            gateway: None,
            oif: ul,
            onlink: false,
            protocol: RTPROT_STATIC,
        };
        nl.replace_device_route(&route).unwrap();
        nl.replace_device_route(&route).unwrap(); // replaced, not duplicated
        let shown = ns.ip(&["route", "show", "10.1.0.0/16"]);
        assert_eq!(shown.trim(), "10.1.0.0/16 dev ul0 proto static", "{shown}");
        let shown = ns.ip(&["route", "show", "10.1.0.0/16", "scope", "global"]);
        assert_eq!(shown.trim(), "10.1.0.0/16 dev ul0 proto static", "{shown}");
        assert_eq!(nl.routes(Some(RTPROT_STATIC)).unwrap(), vec![route]);
        // A replace with a gateway-less `replace_route` would have been scope link.
        nl.delete_route(&route).unwrap();
        nl.replace_route(&route).unwrap();
        let shown = ns.ip(&["route", "show", "10.1.0.0/16"]);
        assert!(shown.contains("scope link"), "{shown}");
    });
}

#[test]
fn errors_name_devices_without_asking_the_kernel() {
    let ns = Netns::new("errors_name_devices_without_asking_the_kernel");
    let Some(ns) = ns else {
        return;
    };
    ns.run(|nl| {
        let route = |oif| RouteSpec {
            dst: Ipv4Addr::new(10, 1, 0, 0),
            prefix: 16,
            gateway: None,
            oif,
            onlink: false,
            protocol: RTPROT_STATIC,
        };
        // One request per call, failed or not: naming the device costs no lookup.
        let before = nl.seq;
        let (e, msg) = errno_of(nl.replace_device_route(&route(4242)));
        assert_eq!(e, libc::ENODEV);
        assert!(
            msg.starts_with("replacing route 10.1.0.0/16 dev ifindex 4242 proto 4: "),
            "{msg}"
        );
        assert_eq!(nl.seq, before.wrapping_add(1));
        nl.name_link(4242, "ghost0");
        let (_, msg) = errno_of(nl.replace_device_route(&route(4242)));
        assert!(
            msg.starts_with("replacing route 10.1.0.0/16 dev ghost0 proto 4: "),
            "{msg}"
        );
        let (_, msg) = errno_of(nl.set_mtu(4242, 1400));
        assert!(msg.starts_with("setting mtu 1400 on ghost0: "), "{msg}");
        assert_eq!(nl.seq, before.wrapping_add(3));
        // Links looked up are known by name from then on.
        let lo = nl.link_by_name("lo").unwrap().expect("lo").index;
        let (_, msg) = errno_of(nl.add_address(lo, Ipv4Addr::new(10, 1, 0, 1), 33));
        assert!(
            msg.starts_with("adding address 10.1.0.1/33 to lo: "),
            "{msg}"
        );
    });
}

#[test]
fn namespace_is_deleted_even_when_the_test_panics() {
    let ns = Netns::new("namespace_is_deleted_even_when_the_test_panics");
    let Some(ns) = ns else {
        return;
    };
    let path = ns.0.path();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        ns.run(|nl| {
            assert!(nl.link_by_name("lo").unwrap().is_some());
            panic!("deliberate panic inside the namespace");
        });
    }));
    assert!(result.is_err());
    assert!(!std::path::Path::new(&path).exists(), "{path} left behind");
}

#[test]
fn errors_keep_errno_and_name_the_operation() {
    let kernel = Failure::Kernel {
        errno: libc::ENETUNREACH,
        ext_ack: Some("Nexthop has invalid gateway".to_string()),
    };
    let e = kernel.into_io("replacing route 10.1.16.0/24 via 192.0.2.2 dev eth0".to_string());
    assert_eq!(errno(&e), Some(libc::ENETUNREACH));
    assert_eq!(e.kind(), io::ErrorKind::NetworkUnreachable);
    assert_eq!(
        e.to_string(),
        "replacing route 10.1.16.0/24 via 192.0.2.2 dev eth0: Network is unreachable \
         (os error 101): Nexthop has invalid gateway"
    );
    let local = Failure::Local(io::Error::from_raw_os_error(libc::ENOBUFS));
    let e = local.into_io("listing routes".to_string());
    assert_eq!(errno(&e), Some(libc::ENOBUFS));
    assert!(e.to_string().starts_with("listing routes: "), "{e}");
    let decode = Failure::Local(io::Error::new(io::ErrorKind::InvalidData, "bad"));
    let e = decode.into_io("listing links".to_string());
    assert_eq!(
        (errno(&e), e.to_string()),
        (None, "listing links: bad".to_string())
    );
    assert_eq!(
        errno(&io::Error::from_raw_os_error(libc::EEXIST)),
        Some(libc::EEXIST)
    );
}

#[test]
fn ext_ack_text_is_read_from_capped_and_full_nacks() {
    let text = b"Nexthop has invalid gateway\0";
    let mut tlv = Vec::new();
    let nla_len = u16::try_from(4 + text.len()).expect("short text");
    tlv.extend_from_slice(&nla_len.to_ne_bytes());
    tlv.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
    tlv.extend_from_slice(text);
    tlv.resize(align4(tlv.len()), 0);

    let mut capped = vec![0u8; NLMSG_HEADER_LEN];
    capped[..4].copy_from_slice(&64u32.to_ne_bytes()); // the request was longer
    capped.extend_from_slice(&tlv);
    let flags = NLM_F_ACK_TLVS | NLM_F_CAPPED;
    let want = Some("Nexthop has invalid gateway".to_string());
    assert_eq!(ext_ack_text(flags, &capped), want);
    assert_eq!(
        ext_ack_text(NLM_F_CAPPED, &capped),
        None,
        "no TLV flag, no text"
    );

    let mut full = vec![0u8; 22];
    full[..4].copy_from_slice(&22u32.to_ne_bytes()); // padded to 24
    full.resize(24, 0);
    full.extend_from_slice(&tlv);
    assert_eq!(ext_ack_text(NLM_F_ACK_TLVS, &full), want);
    assert_eq!(ext_ack_text(NLM_F_ACK_TLVS, &full[..3]), None, "truncated");
}

#[test]
fn vxlan_attrs_match_only_the_same_spec() {
    let spec = flannel_spec(7);
    let attrs = VxlanAttrs {
        vni: 1,
        local: Some(UNDERLAY_IP.into()),
        link: Some(7),
        port: VXLAN_DEFAULT_PORT,
        learning: false,
        gbp: false,
    };
    assert!(attrs.matches(&spec));
    assert!(attrs.matches(&VxlanSpec {
        port: Some(8472),
        mtu: 9000,
        mac: None,
        ..spec.clone()
    }));
    assert!(!attrs.matches(&VxlanSpec {
        port: Some(4789),
        ..spec.clone()
    }));
    assert!(!attrs.matches(&VxlanSpec {
        vni: 2,
        ..spec.clone()
    }));
    assert!(!attrs.matches(&VxlanSpec {
        underlay_index: 8,
        ..spec.clone()
    }));
    assert!(!attrs.matches(&VxlanSpec {
        gbp: true,
        ..spec.clone()
    }));
    assert!(!attrs.matches(&VxlanSpec {
        learning: true,
        ..spec.clone()
    }));
    assert!(!attrs.matches(&VxlanSpec {
        local: Ipv4Addr::new(192, 0, 2, 9).into(),
        ..spec
    }));
}

#[test]
fn blackhole_route_is_added_once_and_found() {
    let Some(ns) = Netns::new("blackhole_route_is_added_once_and_found") else {
        return;
    };
    let dst = Ipv4Addr::new(10, 1, 5, 0);
    ns.run(|nl| {
        assert!(!nl.has_blackhole_route(dst, 24).expect("dump"));
        nl.add_blackhole_route(dst, 24).expect("add");
        nl.add_blackhole_route(dst, 24)
            .expect("already there is fine");
        assert!(nl.has_blackhole_route(dst, 24).expect("dump"));
        assert!(!nl.has_blackhole_route(dst, 25).expect("dump"));
    });
    let shown = ns.ip(&["route", "show", "type", "blackhole"]);
    assert_eq!(
        shown.trim(),
        "blackhole 10.1.5.0/24 metric 4294967295",
        "{shown}"
    );
    // A route of the interface that holds the subnet wins over it.
    ns.ip(&["link", "add", "br0", "type", "bridge"]);
    ns.ip(&["link", "set", "br0", "up"]);
    ns.ip(&["addr", "add", "10.1.5.1/24", "dev", "br0"]);
    let got = ns.ip(&["route", "get", "10.1.5.2"]);
    assert!(got.contains("dev br0"), "{got}");
}

#[test]
fn ipv6_vxlan_device_address_neighbour_fdb_and_onlink_route_as_flannel_does() {
    let ns = Netns::with_underlay(
        "ipv6_vxlan_device_address_neighbour_fdb_and_onlink_route_as_flannel_does",
    );
    let Some(ns) = ns else {
        return;
    };
    ns.ip(&["-6", "addr", "add", "fd00:192::1/64", "dev", "ul0", "nodad"]);
    let local6: std::net::Ipv6Addr = "fd00:192::1".parse().expect("literal");
    let peer6: std::net::Ipv6Addr = "fd00:192::2".parse().expect("literal");
    let own: std::net::Ipv6Addr = "fc00:0:0:5::".parse().expect("literal");
    let subnet: std::net::Ipv6Addr = "fc00:0:0:6::".parse().expect("literal");
    ns.run(|nl| {
        let ul = nl.link_by_name("ul0").unwrap().expect("ul0").index;
        let spec = VxlanSpec {
            name: "flannel-v6.1".to_string(),
            local: local6.into(),
            ..flannel_spec(ul)
        };
        nl.add_vxlan(&spec).unwrap();
        let link = nl.link_by_name("flannel-v6.1").unwrap().expect("created");
        let attrs = link.vxlan.expect("vxlan attrs");
        assert_eq!(attrs.local, Some(local6.into()));
        assert!(attrs.matches(&spec), "{attrs:?} vs {spec:?}");
        assert!(
            !attrs.matches(&flannel_spec(ul)),
            "an IPv4 local is another device"
        );
        let index = link.index;
        nl.set_link_up(index).unwrap();

        // The /128 address (nodad: usable at once), listed among the IPv6 addresses only.
        nl.add_address(index, own, 128).unwrap();
        nl.add_address(index, own, 128).unwrap();
        let v6 = nl.addresses_of::<std::net::Ipv6Addr>(index).unwrap();
        assert!(v6.contains(&(own, 128)), "{v6:?}");
        assert!(nl.addresses(index).unwrap().is_empty(), "no IPv4 address");

        // flannel's three entries per peer, in its order.
        nl.replace_neigh(index, subnet, PEER_MAC).unwrap();
        nl.replace_fdb(index, PEER_MAC, peer6).unwrap();
        let route = RouteSpec {
            dst: subnet,
            prefix: 64,
            gateway: Some(subnet),
            oif: index,
            onlink: true,
            protocol: 3,
        };
        nl.replace_route(&route).unwrap();
        nl.replace_route(&route).unwrap();
        assert!(nl
            .neighbours_of::<std::net::Ipv6Addr>(index)
            .unwrap()
            .contains(&(subnet, PEER_MAC)));
        assert!(nl
            .fdb_of::<std::net::Ipv6Addr>(index)
            .unwrap()
            .contains(&(PEER_MAC, Some(peer6))));
        // The IPv4 view of the same FDB entry has no destination of its family.
        assert!(nl.fdb(index).unwrap().contains(&(PEER_MAC, None)));
        let routes = nl.routes_of::<std::net::Ipv6Addr>(Some(3)).unwrap();
        assert_eq!(routes, vec![route]);
        assert!(nl.routes(Some(3)).unwrap().is_empty(), "no IPv4 route");

        // What iproute2 shows.
        let neigh = ns.ip(&["-6", "neigh", "show", "dev", "flannel-v6.1"]);
        assert!(
            neigh.contains(&format!(
                "fc00:0:0:6:: lladdr {} PERMANENT",
                format_mac(&PEER_MAC)
            )),
            "{neigh}"
        );
        let fdb = ns.exec(&["bridge", "fdb", "show", "dev", "flannel-v6.1"]);
        let want = format!("{} dst fd00:192::2 self permanent", format_mac(&PEER_MAC));
        assert!(
            fdb.lines().any(|l| l.trim() == want),
            "{want:?} missing in {fdb}"
        );
        let shown = ns.ip(&[
            "-6",
            "route",
            "show",
            "dev",
            "flannel-v6.1",
            "proto",
            "boot",
        ]);
        assert_eq!(
            shown.trim(),
            "fc00:0:0:6::/64 via fc00:0:0:6:: metric 1024 onlink pref medium",
            "{shown}"
        );

        // ip -6 route get: the on-link peer has no gateway.
        let got = nl.route_get(peer6).unwrap();
        assert_eq!((got.gateway, got.oif), (None, ul));

        // Removal, idempotent.
        for _ in 0..2 {
            nl.delete_route(&route).unwrap();
            nl.delete_fdb(index, PEER_MAC, peer6).unwrap();
            nl.delete_neigh(index, subnet).unwrap();
            nl.delete_address(index, own, 128).unwrap();
        }
        assert!(nl
            .routes_of::<std::net::Ipv6Addr>(Some(3))
            .unwrap()
            .is_empty());
        assert!(!nl
            .fdb_of::<std::net::Ipv6Addr>(index)
            .unwrap()
            .contains(&(PEER_MAC, Some(peer6))));
        assert!(!nl
            .addresses_of::<std::net::Ipv6Addr>(index)
            .unwrap()
            .contains(&(own, 128)));
    });
}
