//! A captured run (`wasmos_sandbox::migrate::Snapshot`) on the wire.

use std::time::Duration;

use wasmos_proto::v1;
use wasmos_sandbox::migrate::{GlobalValue, Snapshot};

pub(crate) fn to_wire(s: &Snapshot) -> v1::TaskSnapshot {
    v1::TaskSnapshot {
        memory: s.memory.clone(),
        globals: s
            .globals
            .iter()
            .map(|(name, v)| {
                let (kind, bits) = match *v {
                    GlobalValue::I32(v) => (0, v as u32 as u64),
                    GlobalValue::I64(v) => (1, v as u64),
                    GlobalValue::F32(v) => (2, v as u64),
                    GlobalValue::F64(v) => (3, v),
                };
                v1::SnapshotGlobal { name: name.clone(), kind, bits }
            })
            .collect(),
        data_ptr: s.data_ptr,
        fuel: s.fuel,
        cpu_time_ms: s.cpu_time.as_secs_f64() * 1e3,
        wall_time_ms: s.wall_time.as_secs_f64() * 1e3,
        stdout: s.stdout.clone(),
        stderr: s.stderr.clone(),
    }
}

pub(crate) fn from_wire(s: v1::TaskSnapshot) -> Snapshot {
    let ms = |v: f64| Duration::try_from_secs_f64(v / 1e3).unwrap_or_default();
    Snapshot {
        globals: s
            .globals
            .into_iter()
            .filter_map(|g| {
                let v = match g.kind {
                    0 => GlobalValue::I32(g.bits as u32 as i32),
                    1 => GlobalValue::I64(g.bits as i64),
                    2 => GlobalValue::F32(g.bits as u32),
                    3 => GlobalValue::F64(g.bits),
                    _ => return None,
                };
                Some((g.name, v))
            })
            .collect(),
        memory: s.memory,
        data_ptr: s.data_ptr,
        fuel: s.fuel,
        cpu_time: ms(s.cpu_time_ms),
        wall_time: ms(s.wall_time_ms),
        stdout: s.stdout,
        stderr: s.stderr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_survives_the_wire() {
        let s = Snapshot {
            memory: vec![1, 2, 3],
            globals: vec![
                ("a".into(), GlobalValue::I32(-5)),
                ("b".into(), GlobalValue::I64(-7)),
                ("c".into(), GlobalValue::F32(1.5f32.to_bits())),
                ("d".into(), GlobalValue::F64(2.5f64.to_bits())),
            ],
            data_ptr: 65536,
            fuel: 42,
            cpu_time: Duration::from_millis(3),
            wall_time: Duration::from_millis(4),
            stdout: b"out".to_vec(),
            stderr: b"err".to_vec(),
        };
        assert_eq!(from_wire(to_wire(&s)), s);
    }
}
