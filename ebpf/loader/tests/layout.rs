//! Kernel and userspace must agree on every shared type. Both sides are compiled from the same
//! definitions in `rtpedge-common`, but by two different targets (bpfel and the host): this test
//! reads what the BPF compilation computed (sizes, alignments, field offsets embedded in the
//! object, and the key/value sizes of every map definition) and compares it with the host.

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
use rtpedge_common::{
    Config, Counter, Forward, LAYOUT, LAYOUT_NAMES, LAYOUT_SECTION, LAYOUT_SYMBOL, LearnedSource,
    MAX_PINHOLES, Meta, NextHop, Pinhole, PinholeKey, PinholeStats, map_names,
    rtp_stats::StreamStats,
};
use rtpedge_dataplane::BPF_OBJECT;

#[test]
fn bpf_and_host_layouts_agree_field_by_field() {
    let elf = object::File::parse(BPF_OBJECT).expect("BPF object is an ELF file");
    let sym = elf
        .symbols()
        .find(|s| s.name() == Ok(LAYOUT_SYMBOL))
        .expect("layout symbol in the BPF object");
    let section = elf
        .section_by_name(LAYOUT_SECTION)
        .expect("layout section in the BPF object");
    let data = section.data().expect("layout section data");
    let start = sym.address() as usize;
    let bytes = &data[start..start + LAYOUT.len() * 4];
    let bpf: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut mismatches = Vec::new();
    for (i, name) in LAYOUT_NAMES.iter().enumerate() {
        if bpf[i] != LAYOUT[i] {
            mismatches.push(format!("{name}: bpf {} host {}", bpf[i], LAYOUT[i]));
        }
    }
    assert!(mismatches.is_empty(), "layout differs: {mismatches:?}");
    // Sanity: the table really holds what it claims (a stale or empty table would pass above).
    assert_eq!(LAYOUT[0], size_of::<PinholeKey>() as u32);
    assert!(LAYOUT_NAMES.contains(&"Pinhole.learn_deadline_ns"));
}

#[test]
fn bpf_map_definitions_match_the_shared_types() {
    let obj = aya_obj::Object::parse(BPF_OBJECT).expect("parse BPF object");
    let expect: [(&str, u32, u32, u32); 9] = [
        (
            map_names::PINHOLES,
            size_of::<PinholeKey>() as u32,
            size_of::<Pinhole>() as u32,
            MAX_PINHOLES,
        ),
        (
            map_names::PINHOLE_STATS,
            size_of::<PinholeKey>() as u32,
            size_of::<PinholeStats>() as u32,
            MAX_PINHOLES,
        ),
        (
            map_names::LEARNED,
            size_of::<PinholeKey>() as u32,
            size_of::<LearnedSource>() as u32,
            MAX_PINHOLES,
        ),
        (map_names::COUNTERS, 4, 8, Counter::COUNT),
        (map_names::CONFIG, 4, size_of::<Config>() as u32, 1),
        (map_names::META, 4, size_of::<Meta>() as u32, 1),
        (
            map_names::FORWARDS,
            size_of::<PinholeKey>() as u32,
            size_of::<Forward>() as u32,
            MAX_PINHOLES,
        ),
        (
            map_names::NEXTHOPS,
            size_of::<PinholeKey>() as u32,
            size_of::<NextHop>() as u32,
            MAX_PINHOLES,
        ),
        (
            map_names::RTP_STATS,
            size_of::<PinholeKey>() as u32,
            size_of::<StreamStats>() as u32,
            MAX_PINHOLES,
        ),
    ];
    assert_eq!(
        obj.maps.len(),
        expect.len(),
        "maps: {:?}",
        obj.maps.keys().collect::<Vec<_>>()
    );
    for (name, k, v, n) in expect {
        let m = obj
            .maps
            .get(name)
            .unwrap_or_else(|| panic!("map {name} missing"));
        assert_eq!(
            (m.key_size(), m.value_size(), m.max_entries()),
            (k, v, n),
            "map {name}"
        );
    }
}

#[test]
fn counter_names_are_unique_and_cover_the_operator_contract() {
    let names: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
    for required in [
        "passed",
        "no_pinhole",
        "closed",
        "wrong_source",
        "rate_limited",
        "malformed",
        "dscp_marked",
    ] {
        assert!(names.contains(&required), "{required}");
    }
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len());
    for (i, c) in Counter::ALL.iter().enumerate() {
        assert_eq!(*c as usize, i);
    }
}

/// The load generator's XDP sink (bench only) is a separate object with its own shared types.
#[test]
fn sink_bpf_and_host_layouts_agree_field_by_field() {
    use rtpedge_common::sink::{SINK_LAYOUT, SINK_LAYOUT_NAMES, SINK_LAYOUT_SYMBOL, SinkStream};
    let elf = object::File::parse(rtpedge_dataplane::SINK_BPF_OBJECT).expect("sink object");
    let sym = elf
        .symbols()
        .find(|s| s.name() == Ok(SINK_LAYOUT_SYMBOL))
        .expect("sink layout symbol");
    let data = elf
        .section_by_name(LAYOUT_SECTION)
        .expect("layout section in the sink object")
        .data()
        .expect("layout section data");
    let start = sym.address() as usize;
    let bpf: Vec<u32> = data[start..start + SINK_LAYOUT.len() * 4]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mismatches: Vec<String> = SINK_LAYOUT_NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| bpf[*i] != SINK_LAYOUT[*i])
        .map(|(i, n)| format!("{n}: bpf {} host {}", bpf[i], SINK_LAYOUT[i]))
        .collect();
    assert!(mismatches.is_empty(), "sink layout differs: {mismatches:?}");
    assert!(SINK_LAYOUT.contains(&(size_of::<SinkStream>() as u32)));
    assert!(SINK_LAYOUT_NAMES.contains(&"SinkStream.window"));
}

#[test]
fn sink_map_definitions_match_the_shared_types() {
    use rtpedge_common::sink::{
        LATENCY_BUCKETS, SINK_MAX_STREAMS, SINK_PORTS, SinkConfig, SinkStream, SinkTotals,
        map_names as sink,
    };
    let obj = aya_obj::Object::parse(rtpedge_dataplane::SINK_BPF_OBJECT).expect("sink object");
    let expect: [(&str, usize, u32); 5] = [
        (sink::SINK_CONFIG, size_of::<SinkConfig>(), 1),
        (sink::SINK_PORTS, 4, SINK_PORTS),
        (
            sink::SINK_STREAMS,
            size_of::<SinkStream>(),
            SINK_MAX_STREAMS,
        ),
        (sink::SINK_LATENCY, 8, LATENCY_BUCKETS),
        (sink::SINK_TOTALS, size_of::<SinkTotals>(), 1),
    ];
    assert_eq!(
        obj.maps.len(),
        expect.len(),
        "{:?}",
        obj.maps.keys().collect::<Vec<_>>()
    );
    for (name, v, n) in expect {
        let m = obj.maps.get(name).unwrap_or_else(|| panic!("map {name}"));
        assert_eq!(
            (m.key_size(), m.value_size(), m.max_entries()),
            (4, v as u32, n),
            "{name}"
        );
    }
    // None of the data plane's maps, and the data plane's object none of the sink's.
    let dp = aya_obj::Object::parse(BPF_OBJECT).expect("data plane object");
    assert!(dp.maps.keys().all(|k| !k.starts_with("SINK_")));
}
