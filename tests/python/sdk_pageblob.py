"""Drive `drplane blob serve` with the official Azure SDK (azure-storage-blob).

Usage: sdk_pageblob.py ENDPOINT PHASE [PROFILE]
  PHASE write:  create, upload, clear, ranges, diffs, snapshots, conditions, leases; prints
                a JSON summary of what must survive a restart.
  PHASE verify: after a server restart, read everything back and compare with that summary
                (read from stdin).
Exit status 0 only if every check held; each failed check prints what and where.
"""
import hashlib
import json
import sys

from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.storage.blob import BlobServiceClient

KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def client(endpoint):
    conn = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={KEY};BlobEndpoint={endpoint};"
    )
    return BlobServiceClient.from_connection_string(conn)


def expect_error(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except HttpResponseError as e:
        got = getattr(e, "error_code", None) or e.response.headers.get("x-ms-error-code")
        assert got == code, f"expected {code}, got {got} ({e.status_code})"
        return e
    raise AssertionError(f"expected {code}, call succeeded")


def pattern(seed, n):
    out = bytearray()
    x = seed
    while len(out) < n:
        x = hashlib.sha256(x.to_bytes(8, "little")).digest()
        out += x
        x = int.from_bytes(x[:8], "little")
    return bytes(out[:n])


def ranges_of(blob, **kw):
    pages, clears = blob.get_page_ranges(**kw)
    return [(r["start"], r["end"]) for r in pages], [(r["start"], r["end"]) for r in clears]


def write(endpoint, profile):
    svc = client(endpoint)
    cont = svc.get_container_client("sdk")
    cont.create_container()
    expect_error("ContainerAlreadyExists", cont.create_container)
    blob = cont.get_blob_client("disk.bin")
    blob.create_page_blob(size=4 * 1024 * 1024)
    data = pattern(1, 1024 * 1024)
    blob.upload_page(data, offset=0, length=len(data))
    blob.upload_page(pattern(2, 8192), offset=2 * 1024 * 1024, length=8192)
    blob.clear_page(offset=4096, length=4096)
    pages, _ = ranges_of(blob)
    assert pages == [(0, 4095), (8192, 1024 * 1024 - 1), (2 * 1024 * 1024, 2 * 1024 * 1024 + 8191)], pages
    got = blob.download_blob(offset=0, length=16384).readall()
    assert got[:4096] == data[:4096] and got[4096:8192] == bytes(4096) and got[8192:] == data[8192:16384]
    snap1 = blob.create_snapshot()["snapshot"]
    assert len(snap1) == 28 and snap1.endswith("Z"), snap1
    blob.upload_page(pattern(3, 512), offset=512, length=512)
    blob.clear_page(offset=2 * 1024 * 1024, length=4096)
    pages, clears = ranges_of(blob, previous_snapshot_diff=snap1)
    assert pages == [(512, 1023)], pages
    assert clears == [(2 * 1024 * 1024, 2 * 1024 * 1024 + 4095)], clears
    snap_blob = cont.get_blob_client("disk.bin", snapshot=snap1)
    managed = blob.get_page_range_diff_for_managed_disk(snap_blob.url)
    assert [(r["start"], r["end"]) for r in managed[0]] == pages, managed
    assert [(r["start"], r["end"]) for r in managed[1]] == clears, managed
    assert snap_blob.download_blob(offset=512, length=512).readall() == data[512:1024]
    # Writes to a snapshot are refused, not applied to the base.
    try:
        snap_blob.upload_page(b"x" * 512, offset=0, length=512)
        raise AssertionError("write to a snapshot succeeded")
    except HttpResponseError as e:
        assert e.status_code == 400, e.status_code
    assert blob.download_blob(offset=0, length=512).readall() == data[:512]
    # Misaligned and out-of-range pages.
    expect_error("InvalidPageRange", blob._client.page_blob.upload_pages, 512, b"x" * 512, range="bytes=4194304-4194815")
    # Conditional writes.
    props = blob.get_blob_properties()
    assert props.size == 4 * 1024 * 1024 and props.blob_type == "PageBlob", props
    from azure.core import MatchConditions
    blob.upload_page(pattern(4, 512), offset=0, length=512, etag=props.etag, match_condition=MatchConditions.IfNotModified)
    expect_error("ConditionNotMet", blob.upload_page, pattern(4, 512), offset=0, length=512, etag=props.etag, match_condition=MatchConditions.IfNotModified)
    blob.set_sequence_number("update", 5)
    expect_error("SequenceNumberConditionNotMet", blob.upload_page, b"\1" * 512, offset=0, length=512, if_sequence_number_lt=5)
    blob.upload_page(pattern(5, 512), offset=0, length=512, if_sequence_number_lte=5)
    # Leases.
    lease = blob.acquire_lease(lease_duration=15)
    expect_error("LeaseIdMissing", blob.upload_page, b"\2" * 512, offset=0, length=512)
    blob.upload_page(pattern(6, 512), offset=0, length=512, lease=lease)
    lease.release()
    # Snapshots up to and past the profile limit.
    limit = blob2 = None
    snaps = [snap1]
    if profile == "premium":
        blob2 = cont.get_blob_client("limit.bin")
        blob2.create_page_blob(size=4096)
        for _ in range(100):
            blob2.create_snapshot()
        expect_error("SnapshotCountExceeded", blob2.create_snapshot)
        limit = 100
    snaps.append(blob.create_snapshot()["snapshot"])
    final = blob.download_blob(offset=0, length=4 * 1024 * 1024).readall()
    # A name XML cannot carry is listed percent-encoded (Encoded="true") and the SDK decodes
    # it; a control character is refused.
    odd = "odd\uffffname \u00fc+%&#"
    cont.get_blob_client(odd).create_page_blob(size=512)
    assert odd in [b.name for b in cont.list_blobs()], "encoded name not listed back"
    expect_error("InvalidResourceName", cont.get_blob_client("ctl\x01name").create_page_blob, size=512)
    # Metadata and content headers set by the SDK come back; a SAS minted by this SDK works.
    from azure.storage.blob import ContentSettings
    blob.set_blob_metadata({"owner": "py"})
    blob.set_http_headers(ContentSettings(content_type="application/x-vhd"))
    props = blob.get_blob_properties()
    assert props.metadata == {"owner": "py"}, props.metadata
    assert props.content_settings.content_type == "application/x-vhd", props.content_settings
    sas_check(endpoint, blob)
    listed = [b.name for b in cont.list_blobs(include=["snapshots"])]
    return {
        "snapshots": snaps,
        "sha256": hashlib.sha256(final).hexdigest(),
        "snap1_sha256": hashlib.sha256(snap_blob.download_blob().readall()).hexdigest(),
        "listed": listed,
        "limit": limit,
        "sequence_number": blob.get_blob_properties().page_blob_sequence_number,
    }


def sas_check(endpoint, blob):
    import datetime
    from azure.storage.blob import (
        AccountSasPermissions,
        BlobClient,
        BlobSasPermissions,
        ResourceTypes,
        generate_account_sas,
        generate_blob_sas,
    )
    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    token = generate_blob_sas(
        "devstoreaccount1", "sdk", "disk.bin", account_key=KEY,
        permission=BlobSasPermissions(read=True), expiry=expiry,
    )
    reader = BlobClient.from_blob_url(f"{blob.url}?{token}")
    assert reader.download_blob(offset=0, length=512).readall() == blob.download_blob(offset=0, length=512).readall()
    expect_error("AuthorizationPermissionMismatch", reader.upload_page, b"\0" * 512, offset=0, length=512)
    token = generate_account_sas(
        "devstoreaccount1", KEY, ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, list=True), expiry,
    )
    names = [c.name for c in BlobServiceClient(f"{endpoint}?{token}").list_containers()]
    assert "sdk" in names, names


def verify(endpoint, expected):
    svc = client(endpoint)
    cont = svc.get_container_client("sdk")
    blob = cont.get_blob_client("disk.bin")
    final = blob.download_blob().readall()
    assert hashlib.sha256(final).hexdigest() == expected["sha256"], "blob content changed across restart"
    snap = cont.get_blob_client("disk.bin", snapshot=expected["snapshots"][0])
    assert hashlib.sha256(snap.download_blob().readall()).hexdigest() == expected["snap1_sha256"]
    assert [b.name for b in cont.list_blobs(include=["snapshots"])] == expected["listed"]
    assert blob.get_blob_properties().page_blob_sequence_number == expected["sequence_number"]
    if expected["limit"]:
        expect_error("SnapshotCountExceeded", cont.get_blob_client("limit.bin").create_snapshot)
    blob.delete_blob(delete_snapshots="include")
    return {"ok": True}


def main():
    endpoint, phase = sys.argv[1], sys.argv[2]
    profile = sys.argv[3] if len(sys.argv) > 3 else "standard"
    if phase == "write":
        print(json.dumps(write(endpoint, profile)))
    else:
        print(json.dumps(verify(endpoint, json.load(sys.stdin))))


if __name__ == "__main__":
    main()
