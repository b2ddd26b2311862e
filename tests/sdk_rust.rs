//! `drplane blob serve` against the official Azure SDK for Rust (`azure_storage_blob`), a
//! smaller set than the JavaScript and Python suites: the Rust SDK authenticates with Entra ID
//! tokens or a shared access signature in the URL (it has no Shared Key), so every call here is
//! authorized by SAS tokens minted with the account key (`pageblob::http::sas`). The SDK has no
//! Get Page Ranges Diff or Incremental Copy; those are proven with the other SDKs.

mod common;

use std::collections::HashMap;

use azure_core::http::{RequestContent, StatusCode, Url};
use azure_storage_blob::models::{
    BlobClientCreateSnapshotResultHeaders, BlobClientGetPropertiesResultHeaders, HttpRange,
    PageBlobClientCreateOptions,
};
use azure_storage_blob::BlobServiceClient;
use futures::TryStreamExt;
use pageblob::http::sas::{account_sas, service_sas, Grant};
use pageblob::http::shared_key::{decode_key, DEV_ACCOUNT, DEV_KEY};

use common::*;

fn grant(permissions: &str) -> Grant<'_> {
    Grant {
        permissions,
        expiry: "2099-01-01T00:00:00Z",
        ..Grant::default()
    }
}

fn service(endpoint: &str, token: &str) -> BlobServiceClient {
    let url = Url::parse(&format!("{endpoint}?{token}")).unwrap();
    BlobServiceClient::new(url, None, None).unwrap()
}

fn status(e: &azure_core::Error) -> Option<StatusCode> {
    e.http_status()
}

async fn download(client: &azure_storage_blob::BlobClient) -> Vec<u8> {
    let response = client.download(None).await.unwrap();
    response.body.collect().await.unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_creates_writes_snapshots_and_lists_ranges_under_sas() {
    let dir = temp_dir();
    let server = start_server(dir.path(), "standard");
    let key = decode_key(DEV_KEY).unwrap();
    let full = account_sas(DEV_ACCOUNT, &key, "sco", &grant("rwdlc"));
    let svc = service(&server.endpoint, &full);
    let container = svc.blob_container_client("rustsdk");
    container.create(None).await.unwrap();
    let blob = container.blob_client("disk.bin");
    let pages = blob.page_blob_client();
    let metadata = HashMap::from([("owner".to_string(), "dr".to_string())]);
    let options = PageBlobClientCreateOptions {
        metadata: Some(metadata.clone()),
        blob_content_type: Some("application/x-vhd".into()),
        ..Default::default()
    };
    pages.create(1 << 20, Some(options)).await.unwrap();
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    pages
        .upload_pages(
            RequestContent::from(data.clone()),
            data.len() as u64,
            HttpRange::new(0, data.len() as u64),
            None,
        )
        .await
        .unwrap();
    pages
        .clear_pages(HttpRange::new(4096, 4096), None)
        .await
        .unwrap();
    let snapshot = blob.create_snapshot(None).await.unwrap();
    let snapshot = snapshot.snapshot().unwrap().expect("a snapshot id");
    pages
        .upload_pages(
            RequestContent::from(vec![0xee; 512]),
            512,
            HttpRange::new(1 << 19, 512),
            None,
        )
        .await
        .unwrap();

    let mut pager = pages.list_page_ranges(None).unwrap();
    let list = pager
        .try_next()
        .await
        .unwrap()
        .unwrap()
        .into_model()
        .unwrap();
    let ranges: Vec<(Option<i64>, Option<i64>)> =
        list.page_ranges.iter().map(|r| (r.start, r.end)).collect();
    assert_eq!(
        ranges,
        [
            (Some(0), Some(4095)),
            (Some(8192), Some(65535)),
            (Some(1 << 19), Some((1 << 19) + 511))
        ]
    );

    let props = blob.get_properties(None).await.unwrap();
    assert_eq!(props.metadata().unwrap(), metadata);
    assert_eq!(
        props.content_type().unwrap().as_deref(),
        Some("application/x-vhd")
    );
    assert_eq!(props.content_length().unwrap(), Some(1 << 20));

    let mut expected = data.clone();
    expected[4096..8192].fill(0);
    expected.resize(1 << 20, 0);
    let old = download(&blob.with_snapshot(&snapshot).unwrap()).await;
    assert!(old == expected, "the snapshot reads as it was taken");
    expected[1 << 19..(1 << 19) + 512].fill(0xee);
    assert!(
        download(&blob).await == expected,
        "the blob reads its writes"
    );

    // A read-only service SAS for this blob reads it and nothing more.
    let read_only = service_sas(DEV_ACCOUNT, &key, "rustsdk", Some("disk.bin"), &grant("r"));
    let reader = service(&server.endpoint, &read_only)
        .blob_container_client("rustsdk")
        .blob_client("disk.bin");
    assert!(download(&reader).await == expected);
    let refused = reader
        .page_blob_client()
        .clear_pages(HttpRange::new(0, 512), None)
        .await
        .unwrap_err();
    assert_eq!(status(&refused), Some(StatusCode::Forbidden), "{refused}");
    let other = service(&server.endpoint, &read_only)
        .blob_container_client("rustsdk")
        .blob_client("other.bin");
    let refused = other.get_properties(None).await.unwrap_err();
    assert_eq!(status(&refused), Some(StatusCode::Forbidden), "{refused}");
    // An expired token is refused.
    let expired = Grant {
        expiry: "2001-01-01",
        ..grant("r")
    };
    let expired = account_sas(DEV_ACCOUNT, &key, "sco", &expired);
    let late = service(&server.endpoint, &expired)
        .blob_container_client("rustsdk")
        .blob_client("disk.bin");
    let refused = late.get_properties(None).await.unwrap_err();
    assert_eq!(status(&refused), Some(StatusCode::Forbidden), "{refused}");
    server.stop("-TERM");
}
