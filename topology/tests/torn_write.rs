//! A write of the embedded log that fails part-way leaves no torn frame behind: the next open
//! would cut the log at it and drop every later, acknowledged frame (review LOW). Its own test
//! binary: it lowers the process's file-size limit (RLIMIT_FSIZE) to make a write fail.

use std::sync::Arc;
use std::time::Duration;

use howk_topology::log::embedded::EmbeddedLog;
use howk_topology::log::{Log, OutRecord, ReadEvent, TopicPartition, TopicReader};
use howk_topology::topics::TopicSpec;

fn record(value: Vec<u8>) -> OutRecord {
    OutRecord {
        topic: Arc::from("t"),
        partition: Some(0),
        key: b"k".to_vec(),
        value: Some(value),
    }
}

fn set_file_size_limit(bytes: libc::rlim_t) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain system calls on this process; this binary runs this one test.
    unsafe {
        // Past the limit a write fails with EFBIG instead of the process being killed.
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

#[test]
fn a_failed_write_is_taken_back_and_later_commits_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let specs = [TopicSpec {
        name: "t".into(),
        partitions: 1,
        compacted: false,
    }];
    let path = dir.path().join("log");
    {
        let log = EmbeddedLog::open(Some(&path), &specs).unwrap();
        log.produce(vec![record(b"first".to_vec())]).unwrap();
        let size = std::fs::metadata(path.join("log.bin")).unwrap().len();
        // Room for a small frame, not for a 64 KiB one: that write fails part-way.
        set_file_size_limit(size + 4096);
        assert!(log.produce(vec![record(vec![b'x'; 64 * 1024])]).is_err());
        log.produce(vec![record(b"after".to_vec())])
            .expect("a frame that fits is written after the failed one");
        set_file_size_limit(libc::RLIM_INFINITY);
    }

    let log = EmbeddedLog::open(Some(&path), &specs).unwrap();
    let mut reader = log.reader().unwrap();
    reader.assign(&[(TopicPartition::new("t", 0), 0)]).unwrap();
    let mut values = Vec::new();
    while let Some(ReadEvent::Record(record)) = reader.poll(Duration::from_millis(10)).unwrap() {
        values.push(record.value.unwrap().to_vec());
    }
    assert_eq!(values, [b"first".to_vec(), b"after".to_vec()]);
}
