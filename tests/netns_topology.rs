//! The shared namespace topology works: host-gw and flannel-style kernel VXLAN both carry
//! container-to-container pings, every namespace is gone after drop (also after a panic), and the
//! harness agrees with the daemon on the VXLAN port.

use testkit::netns::{self, Attach, Netns, TwoHosts};

fn ping(t: &TwoHosts) {
    t.ping_both_ways(2).expect("the containers ping each other");
}

#[test]
fn two_hosts_hostgw_then_kernel_vxlan() {
    if !netns::require_root("two_hosts_hostgw_then_kernel_vxlan") {
        return;
    }
    netns::sweep_stale();
    let t = netns::two_hosts(Attach::Bridge).expect("build topology");
    let names = t.names();
    assert_eq!(names.len(), 6);
    assert!(
        names.iter().all(|n| Netns::exists(n) && n.len() < 32),
        "{names:?}"
    );

    t.set_container_mtu(netns::UNDERLAY_MTU).unwrap();
    t.add_hostgw_routes().unwrap();
    ping(&t);
    // the edge sits on the underlay too
    t.edge
        .as_ref()
        .unwrap()
        .run(&["ping", "-n", "-c", "1", "-W", "2", netns::HOST_A_UL])
        .unwrap();

    t.remove_hostgw_routes().unwrap();
    t.add_kernel_vxlan().unwrap();
    t.set_container_mtu(netns::VXLAN_MTU).unwrap();
    ping(&t);
    // an MTU-sized ping crosses the VXLAN without fragmentation: 1450 - 28
    t.ctr_a
        .run(&[
            "ping",
            "-n",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            "1422",
            netns::CTR_B,
        ])
        .unwrap();
    t.remove_kernel_vxlan().unwrap();

    // a process left running inside is killed on drop
    let mut sleeper = t.ctr_b.cmd("sleep").arg("600").spawn().unwrap();
    drop(t);
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "sleep in ctr_b was killed: {status}");
    for n in &names {
        assert!(!Netns::exists(n), "{n} still exists");
    }
}

#[test]
fn routed_direct_underlay_and_enter() {
    if !netns::require_root("routed_direct_underlay_and_enter") {
        return;
    }
    let t = netns::two_hosts_with(Attach::Routed, netns::Underlay::Direct).expect("build topology");
    assert!(t.edge.is_none());
    t.add_hostgw_routes().unwrap();
    ping(&t);
    assert_eq!(t.host_a.read_sysctl("net.ipv4.ip_forward").unwrap(), "1");
    // setns(2) on a dedicated thread: only inside host_a can a socket bind its underlay address
    assert!(std::net::UdpSocket::bind((netns::HOST_A_UL, 0)).is_err());
    std::thread::scope(|s| {
        s.spawn(|| {
            t.host_a
                .enter()
                .and_then(|()| std::net::UdpSocket::bind((netns::HOST_A_UL, 0)))
                .map(drop)
        })
        .join()
    })
    .unwrap()
    .expect("bind 192.0.2.1 after entering host_a");
    let names = t.names();
    drop(t);
    assert!(names.iter().all(|n| !Netns::exists(n)));
}

#[test]
fn harness_vxlan_port_is_the_daemons() {
    // The harness cannot see control (engine tests use it too), so it keeps its own copy.
    assert_eq!(netns::VXLAN_PORT, control::config::VXLAN_DEFAULT_PORT);
}

#[test]
fn a_panicking_test_leaves_no_namespace_behind() {
    let Some(ns) = Netns::for_test("a_panicking_test_leaves_no_namespace_behind", "panic") else {
        return;
    };
    let name = ns.name().to_string();
    let inside = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.within(|| panic!("deliberate panic inside the namespace"))
    }));
    assert!(inside.is_err(), "the panic reaches the caller");
    assert!(Netns::exists(&name), "still there while the guard lives");
    let unwound = std::panic::catch_unwind(move || {
        let _guard = ns;
        panic!("deliberate panic while the guard is alive");
    });
    assert!(unwound.is_err());
    assert!(!Netns::exists(&name), "{name} left behind after unwinding");
}
