"""Upload a file as a page blob with the official SDK; print MiB/s. Used by scripts/bench-blob-upload.sh.

Usage: sdk_upload.py ENDPOINT FILE THREADS
"""
import sys
import time

from azure.storage.blob import BlobServiceClient, BlobType

KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def main():
    endpoint, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    conn = f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};BlobEndpoint={endpoint};"
    svc = BlobServiceClient.from_connection_string(conn, max_page_size=4 * 1024 * 1024)
    cont = svc.get_container_client("bench")
    try:
        cont.create_container()
    except Exception:
        pass
    data = open(path, "rb").read()
    start = time.time()
    cont.get_blob_client("sdk.bin").upload_blob(data, blob_type=BlobType.PAGEBLOB, overwrite=True, max_concurrency=threads)
    secs = time.time() - start
    print(f"{len(data) / secs / 1048576:.1f}")


if __name__ == "__main__":
    main()
