//! Raw export through each copy path (mapped file, copy_file_range from an unmapped file,
//! buffered from bytes, a replayed-log overlay) and to a stream: all give the same bytes.

use std::sync::Arc;

use vhdx::export::{export_raw, RawTarget};
use vhdx::layout::MIB;
use vhdx::testing::{pattern, DirtyLog, ImageBuilder};
use vhdx::{Disk, MappedFile, NoParents, PositionalFile, ReadAt};

fn builder(dirty: bool) -> ImageBuilder {
    let mut b = ImageBuilder::new(13 * MIB + 512);
    b.block_size(2 * MIB as u32)
        .write(0, &pattern(1, 3 * MIB as usize))
        .write(9 * MIB + 512, &pattern(2, 4 * MIB as usize));
    if dirty {
        b.dirty_log(DirtyLog {
            entries: 2,
            ..Default::default()
        });
    }
    b
}

fn export_to_file(disk: &Disk, threads: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.raw");
    let out = std::fs::File::create(&path).unwrap();
    let stats = export_raw(disk, RawTarget::File(&out), threads, &|_| {}).unwrap();
    assert_eq!(stats.data_bytes + stats.hole_bytes, disk.virtual_size());
    std::fs::read(&path).unwrap()
}

#[test]
fn every_copy_path_exports_the_same_bytes() {
    for dirty in [false, true] {
        let b = builder(dirty);
        let expected = b.expected_content(None);
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img.vhdx");
        std::fs::write(&image, b.build()).unwrap();
        let sources: Vec<(&str, Box<dyn ReadAt>)> = vec![
            ("mapped", Box::new(MappedFile::open(&image).unwrap())),
            ("pread", Box::new(PositionalFile::open(&image).unwrap())),
            ("bytes", Box::new(Arc::new(std::fs::read(&image).unwrap()))),
        ];
        for (name, source) in sources {
            let disk = Disk::open_with(source, name, &NoParents).unwrap();
            for threads in [1, 3] {
                assert!(
                    export_to_file(&disk, threads) == expected,
                    "{name}, dirty={dirty}, threads={threads}"
                );
            }
            let mut streamed = Vec::new();
            export_raw(&disk, RawTarget::Stream(&mut streamed), 1, &|_| {}).unwrap();
            assert!(streamed == expected, "{name} stream, dirty={dirty}");
        }
    }
}

#[test]
fn export_over_an_existing_larger_file_leaves_no_old_bytes() {
    let b = builder(false);
    let disk = Disk::open_with(Box::new(b.build()), "img", &NoParents).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.raw");
    std::fs::write(&path, vec![0xEE; 20 * MIB as usize]).unwrap();
    let out = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    export_raw(&disk, RawTarget::File(&out), 2, &|_| {}).unwrap();
    assert!(std::fs::read(&path).unwrap() == b.expected_content(None));
}

#[cfg(target_os = "linux")]
#[test]
fn an_image_truncated_during_an_export_fails_it_with_the_cause() {
    let b = builder(false);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("img.vhdx");
    let bytes = b.build();
    std::fs::write(&image, &bytes).unwrap();
    let disk = Disk::open(&image).unwrap();
    // Another process cuts the payload blocks off while the image is open (mapped).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(bytes.len() as u64 / 3)
        .unwrap();
    for threads in [1, 2] {
        let out = std::fs::File::create(dir.path().join("out.raw")).unwrap();
        let err = export_raw(&disk, RawTarget::File(&out), threads, &|_| {}).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("img.vhdx") && message.contains("shrank"),
            "{message}"
        );
    }
    let err = export_raw(&disk, RawTarget::Stream(&mut Vec::new()), 1, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("shrank"), "{err}");
    assert!(disk.check_mapped().is_err());
}
