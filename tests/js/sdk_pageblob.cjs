// Drive `drplane blob serve` with the official Azure SDK for JavaScript (@azure/storage-blob).
//
// Usage: node sdk_pageblob.cjs ENDPOINT PHASE [PROFILE]
//   PHASE write:  every page-blob behaviour the SDK offers (writes, clears, ranges, diffs,
//                 snapshots, metadata, content headers, conditions, leases, incremental copy,
//                 listings, SAS, checksums); prints a JSON summary of what must survive a restart.
//   PHASE verify: after a restart (graceful or kill -9), read everything back and compare with
//                 the summary (read from stdin).
// Each check is named; the script prints `ok NAME` per check on stderr and exits non-zero at
// the first that fails, saying what it expected and what it got. Run against Azurite too
// (scripts/azurite-compare.sh), where the score is the number of checks passed.
"use strict";

const crypto = require("node:crypto");
const {
  AccountSASPermissions,
  BlobSASPermissions,
  BlobServiceClient,
  ContainerSASPermissions,
  SASProtocol,
  StorageSharedKeyCredential,
  generateAccountSASQueryParameters,
  generateBlobSASQueryParameters,
} = require("@azure/storage-blob");

const ACCOUNT = "devstoreaccount1";
const KEY =
  "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const MiB = 1024 * 1024;
const credential = new StorageSharedKeyCredential(ACCOUNT, KEY);
// Retries would hide a wrong answer behind a second try.
const options = { retryOptions: { maxTries: 1 } };

let passed = 0;
const keepGoing = process.env.SDK_KEEP_GOING === "1";
const failures = [];

async function check(name, fn) {
  try {
    await fn();
    passed += 1;
    process.stderr.write(`ok ${name}\n`);
  } catch (e) {
    const why = `FAILED ${name}: ${e && e.stack ? e.stack : e}`;
    process.stderr.write(`${why}\n`);
    failures.push(name);
    if (!keepGoing) {
      throw new Error(why);
    }
  }
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

// Objects compare by their sorted keys (metadata is a map, not a list).
function canonical(value) {
  if (value && typeof value === "object" && !Array.isArray(value) && !(value instanceof Date)) {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, canonical(value[k])]));
  }
  return Array.isArray(value) ? value.map(canonical) : value;
}

function eq(got, want, what) {
  const g = JSON.stringify(canonical(got));
  const w = JSON.stringify(canonical(want));
  if (g !== w) throw new Error(`${what}: expected ${w}, got ${g}`);
}

async function expectError(status, code, fn) {
  try {
    await fn();
  } catch (e) {
    const got = e.code || (e.details && e.details.errorCode);
    if (e.statusCode !== status || (code && got !== code)) {
      throw new Error(`expected ${status} ${code}, got ${e.statusCode} ${got}: ${e.message}`);
    }
    return e;
  }
  throw new Error(`expected ${status} ${code}, the call succeeded`);
}

function pattern(seed, n) {
  const out = Buffer.alloc(n);
  let block = Buffer.from(`seed-${seed}`);
  for (let at = 0; at < n; at += 32) {
    block = crypto.createHash("sha256").update(block).digest();
    block.copy(out, at, 0, Math.min(32, n - at));
  }
  return out;
}

async function readAll(blob, offset, count, opts) {
  const r = await blob.download(offset, count, opts);
  const chunks = [];
  for await (const c of r.readableStreamBody) chunks.push(c);
  return Buffer.concat(chunks);
}

function sha(buf) {
  return crypto.createHash("sha256").update(buf).digest("hex");
}

// getPageRanges() and its diffs answer {offset, count} where count is end - start (the SDK's
// own mapping of <Start>/<End>); back to inclusive [start, end].
function ranges(list) {
  return (list || []).map((r) => [r.offset, r.offset + r.count]);
}

async function listAll(iter) {
  const out = [];
  for await (const x of iter) out.push(x);
  return out;
}

// Azure Storage CRC-64 (CRC-64/NVME, reflected 0x9A6C9329AC4BC9B5), little-endian bytes.
function crc64(buf) {
  const poly = 0x9a6c9329ac4bc9b5n;
  let crc = 0xffffffffffffffffn;
  for (const b of buf) {
    crc ^= BigInt(b);
    for (let i = 0; i < 8; i++) crc = crc & 1n ? (crc >> 1n) ^ poly : crc >> 1n;
  }
  crc ^= 0xffffffffffffffffn;
  const out = Buffer.alloc(8);
  out.writeBigUInt64LE(crc);
  return out;
}

async function write(endpoint, profile) {
  const svc = new BlobServiceClient(endpoint, credential, options);
  const cont = svc.getContainerClient("jssdk");
  const blob = cont.getPageBlobClient("disk.bin");
  const data = pattern(1, MiB);
  const summary = {};

  await check("container create with metadata, properties, set metadata", async () => {
    await cont.create({ metadata: { owner: "ops", tier: "gold" } });
    await expectError(409, "ContainerAlreadyExists", () => cont.create());
    const p = await cont.getProperties();
    eq(p.metadata, { owner: "ops", tier: "gold" }, "container metadata");
    assert(p.etag && p.lastModified, "container etag and last-modified");
    await cont.setMetadata({ owner: "dr" });
    eq((await cont.getProperties()).metadata, { owner: "dr" }, "container metadata replaced");
  });

  await check("bad container names are InvalidResourceName", async () => {
    await expectError(400, "InvalidResourceName", () =>
      svc.getContainerClient("Upper-Case").create(),
    );
    await expectError(400, "InvalidResourceName", () => svc.getContainerClient("a--b").create());
  });

  await check("page blob create with metadata and content headers", async () => {
    await blob.create(4 * MiB, {
      metadata: { source: "vm1", disk: "0" },
      blobHTTPHeaders: {
        blobContentType: "application/x-vhd",
        blobCacheControl: "no-cache",
        blobContentLanguage: "en",
        blobContentDisposition: "attachment",
        blobContentEncoding: "identity",
      },
    });
    const p = await blob.getProperties();
    eq(p.metadata, { disk: "0", source: "vm1" }, "blob metadata");
    eq(p.contentType, "application/x-vhd", "content type");
    eq(p.cacheControl, "no-cache", "cache control");
    eq(p.contentLanguage, "en", "content language");
    eq(p.contentDisposition, "attachment", "content disposition");
    eq(p.contentEncoding, "identity", "content encoding");
    eq(p.blobType, "PageBlob", "blob type");
    eq(p.contentLength, 4 * MiB, "size");
  });

  await check("request ids are GUIDs and the client request id is echoed", async () => {
    const r = await blob.getProperties();
    assert(
      /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(r.requestId),
      `request id ${r.requestId}`,
    );
    assert(r.clientRequestId, "the SDK sends a client request id and reads it back");
  });

  await check("upload, clear and open-ended page ranges", async () => {
    await blob.uploadPages(data, 0, data.length);
    await blob.uploadPages(pattern(2, 8192), 2 * MiB, 8192);
    await blob.clearPages(4096, 4096);
    const r = await blob.getPageRanges();
    eq(
      ranges(r.pageRange),
      [
        [0, 4095],
        [8192, MiB - 1],
        [2 * MiB, 2 * MiB + 8191],
      ],
      "page ranges",
    );
    const listed = await listAll(blob.listPageRanges());
    eq(listed.length, 3, "listPageRanges items");
    // A page at a time: the SDK gives each NextMarker back as the next call's marker.
    const pages = await listAll(blob.listPageRanges().byPage({ maxPageSize: 1 }));
    eq(
      pages.map((p) => (p.pageRange || []).map((r) => [r.start, r.end])),
      [[[0, 4095]], [[8192, MiB - 1]], [[2 * MiB, 2 * MiB + 8191]]],
      "listPageRanges by page",
    );
    const got = await readAll(blob, 0, 16384);
    assert(got.subarray(0, 4096).equals(data.subarray(0, 4096)), "first page");
    assert(got.subarray(4096, 8192).equals(Buffer.alloc(4096)), "cleared pages read zeros");
  });

  await check("snapshots, diffs and managed-disk diffs", async () => {
    const snap = (await blob.createSnapshot()).snapshot;
    summary.snap1 = snap;
    await blob.uploadPages(pattern(3, 512), 512, 512);
    await blob.clearPages(2 * MiB, 4096);
    const d = await blob.getPageRangesDiff(0, 4 * MiB, snap);
    eq(ranges(d.pageRange), [[512, 1023]], "diff pages");
    eq(ranges(d.clearRange), [[2 * MiB, 2 * MiB + 4095]], "diff clears");
    const listed = await listAll(blob.listPageRangesDiff(0, 4 * MiB, snap));
    eq(listed.length, 2, "listPageRangesDiff items");
    const snapUrl = blob.withSnapshot(snap).url;
    const m = await blob.getPageRangesDiffForManagedDisks(0, 4 * MiB, snapUrl);
    eq(ranges(m.pageRange), [[512, 1023]], "managed-disk diff");
    const old = await readAll(blob.withSnapshot(snap), 512, 512);
    assert(old.equals(data.subarray(512, 1024)), "snapshot keeps the old bytes");
    await expectError(400, null, () => blob.withSnapshot(snap).uploadPages(Buffer.alloc(512), 0, 512));
  });

  await check("Content-MD5 and CRC-64 of a Put Page are checked", async () => {
    const page = pattern(9, 512);
    const md5 = crypto.createHash("md5").update(page).digest();
    await blob.uploadPages(page, 1536, 512, { transactionalContentMD5: md5 });
    await expectError(400, "Md5Mismatch", () =>
      blob.uploadPages(pattern(10, 512), 1536, 512, { transactionalContentMD5: md5 }),
    );
    await blob.uploadPages(page, 1536, 512, { transactionalContentCrc64: crc64(page) });
    await expectError(400, "Crc64Mismatch", () =>
      blob.uploadPages(pattern(10, 512), 1536, 512, { transactionalContentCrc64: crc64(page) }),
    );
    const back = await readAll(blob, 1536, 512);
    assert(back.equals(page), "a refused write left the page as it was");
  });

  await check("structured CRC-64 message bodies", async () => {
    const page = pattern(11, 4096);
    await blob.uploadPages(page, 8192, 4096, { contentChecksumAlgorithm: "StorageCrc64" });
    const back = await readAll(blob, 8192, 4096);
    assert(back.equals(page), "structured upload stored its content");
    data.set(page, 8192);
  });

  await check("conditional reads: 304 and 412", async () => {
    const p = await blob.getProperties();
    const e304 = await expectError(304, null, () =>
      blob.download(0, 512, { conditions: { ifNoneMatch: p.etag } }),
    );
    assert(e304, "If-None-Match with the current ETag");
    await expectError(412, "ConditionNotMet", () =>
      blob.download(0, 512, { conditions: { ifMatch: '"0x1"' } }),
    );
    await expectError(412, "ConditionNotMet", () =>
      blob.getProperties({ conditions: { ifMatch: '"0x1"' } }),
    );
    await expectError(304, null, () =>
      blob.getProperties({ conditions: { ifModifiedSince: new Date(Date.now() + 3600e3) } }),
    );
    await expectError(412, "ConditionNotMet", () =>
      blob.download(0, 512, {
        conditions: { ifUnmodifiedSince: new Date(p.lastModified.getTime() - 3600e3) },
      }),
    );
    const ok = await readAll(blob, 0, 512, { conditions: { ifMatch: p.etag } });
    eq(ok.length, 512, "If-Match with the current ETag reads");
  });

  await check("conditional and sequence-number writes", async () => {
    const p = await blob.getProperties();
    await blob.uploadPages(pattern(4, 512), 0, 512, { conditions: { ifMatch: p.etag } });
    await expectError(412, "ConditionNotMet", () =>
      blob.uploadPages(pattern(4, 512), 0, 512, { conditions: { ifMatch: p.etag } }),
    );
    await blob.updateSequenceNumber("update", 5);
    await expectError(412, "SequenceNumberConditionNotMet", () =>
      blob.uploadPages(pattern(4, 512), 0, 512, {
        conditions: { ifSequenceNumberLessThan: 5 },
      }),
    );
    data.set(pattern(4, 512), 0);
  });

  await check("set metadata and content headers", async () => {
    await blob.setMetadata({ state: "replicating" });
    await blob.setHTTPHeaders({ blobContentType: "application/octet-stream", blobCacheControl: "max-age=5" });
    const p = await blob.getProperties();
    eq(p.metadata, { state: "replicating" }, "metadata replaced");
    eq(p.cacheControl, "max-age=5", "cache control set");
    eq(p.contentLanguage, undefined, "headers not given are cleared");
    await blob.resize(4 * MiB);
    eq((await blob.getProperties()).cacheControl, "max-age=5", "a resize keeps content headers");
  });

  await check("leases: duration, break, release of a broken lease", async () => {
    const lease = blob.getBlobLeaseClient();
    await lease.acquireLease(15);
    let p = await blob.getProperties();
    eq([p.leaseState, p.leaseStatus, p.leaseDuration], ["leased", "locked", "fixed"], "fixed lease");
    await expectError(412, "LeaseIdMissing", () => blob.uploadPages(pattern(5, 512), 0, 512));
    await lease.breakLease(0);
    p = await blob.getProperties();
    eq([p.leaseState, p.leaseDuration], ["broken", undefined], "broken lease");
    await lease.releaseLease();
    eq((await blob.getProperties()).leaseState, "available", "released");
    const infinite = blob.getBlobLeaseClient();
    await infinite.acquireLease(-1);
    eq((await blob.getProperties()).leaseDuration, "infinite", "infinite lease");
    await infinite.releaseLease();
  });

  await check("incremental copy reports its destination snapshot", async () => {
    const snap = (await blob.createSnapshot()).snapshot;
    const copy = cont.getPageBlobClient("copy.bin");
    const started = await copy.startCopyIncremental(blob.withSnapshot(snap).url);
    assert(started.copyId, "copy id");
    const p = await copy.getProperties();
    eq([p.copyStatus, p.isIncrementalCopy], ["success", true], "copy status");
    assert(p.destinationSnapshot, "x-ms-copy-destination-snapshot on the destination");
    const copied = await readAll(copy.withSnapshot(p.destinationSnapshot), 0, MiB);
    const source = await readAll(blob.withSnapshot(snap), 0, MiB);
    assert(copied.equals(source), "the destination snapshot holds the source snapshot");
    summary.copySnapshot = p.destinationSnapshot;
  });

  await check("listings: prefix, delimiter, paging, metadata", async () => {
    for (const name of ["dir/a", "dir/b", "dir/sub/c", "other"]) {
      await cont.getPageBlobClient(name).create(512, { metadata: { n: name.length.toString() } });
    }
    const flat = (await listAll(cont.listBlobsFlat({ prefix: "dir/", includeMetadata: true }))).map(
      (b) => [b.name, b.metadata.n],
    );
    eq(flat, [["dir/a", "5"], ["dir/b", "5"], ["dir/sub/c", "9"]], "prefix listing with metadata");
    // The SDK yields a page's prefixes before its blobs.
    const tree = await listAll(cont.listBlobsByHierarchy("/", { prefix: "dir/" }));
    eq(
      tree.map((x) => [x.kind, x.name]).sort(),
      [["blob", "dir/a"], ["blob", "dir/b"], ["prefix", "dir/sub/"]],
      "hierarchy",
    );
    const pages = [];
    for await (const page of cont.listBlobsFlat().byPage({ maxPageSize: 2 })) {
      pages.push(page.segment.blobItems.map((b) => b.name));
    }
    assert(pages.length >= 3 && pages.every((p) => p.length <= 2), `pages ${JSON.stringify(pages)}`);
    const names = pages.flat();
    eq(names.length, new Set(names).size, "each blob listed once across pages");
    const containers = [];
    for await (const page of svc.listContainers({ prefix: "js", includeMetadata: true }).byPage({ maxPageSize: 1 })) {
      containers.push(...page.containerItems.map((c) => [c.name, c.metadata]));
    }
    eq(containers, [["jssdk", { owner: "dr" }]], "container listing");
  });

  await check("service SAS for a blob and a container, account SAS", async () => {
    const now = new Date(Date.now() - 60e3);
    const expiresOn = new Date(Date.now() + 3600e3);
    const readOnly = generateBlobSASQueryParameters(
      {
        containerName: "jssdk",
        blobName: "disk.bin",
        permissions: BlobSASPermissions.parse("r"),
        startsOn: now,
        expiresOn,
        protocol: SASProtocol.HttpsAndHttp,
      },
      credential,
    ).toString();
    const sasBlob = new BlobServiceClient(`${endpoint}?${readOnly}`, undefined, options)
      .getContainerClient("jssdk")
      .getPageBlobClient("disk.bin");
    eq((await readAll(sasBlob, 0, 512)).length, 512, "read with a read SAS");
    await expectError(403, "AuthorizationPermissionMismatch", () =>
      sasBlob.uploadPages(Buffer.alloc(512), 0, 512),
    );
    const other = new BlobServiceClient(`${endpoint}?${readOnly}`, undefined, options)
      .getContainerClient("jssdk")
      .getPageBlobClient("other");
    await expectError(403, "AuthenticationFailed", () => other.getProperties());
    const expired = generateBlobSASQueryParameters(
      {
        containerName: "jssdk",
        blobName: "disk.bin",
        permissions: BlobSASPermissions.parse("r"),
        expiresOn: new Date(Date.now() - 60e3),
      },
      credential,
    ).toString();
    await expectError(403, "AuthenticationFailed", () =>
      new BlobServiceClient(`${endpoint}?${expired}`, undefined, options)
        .getContainerClient("jssdk")
        .getPageBlobClient("disk.bin")
        .getProperties(),
    );
    const httpsOnly = generateBlobSASQueryParameters(
      {
        containerName: "jssdk",
        permissions: ContainerSASPermissions.parse("rl"),
        expiresOn,
        protocol: SASProtocol.Https,
      },
      credential,
    ).toString();
    await expectError(403, "AuthorizationProtocolMismatch", () =>
      new BlobServiceClient(`${endpoint}?${httpsOnly}`, undefined, options)
        .getContainerClient("jssdk")
        .getProperties(),
    );
    const elsewhere = generateBlobSASQueryParameters(
      {
        containerName: "jssdk",
        permissions: ContainerSASPermissions.parse("rl"),
        expiresOn,
        ipRange: { start: "10.1.2.3", end: "10.1.2.9" },
      },
      credential,
    ).toString();
    await expectError(403, "AuthorizationSourceIPMismatch", () =>
      new BlobServiceClient(`${endpoint}?${elsewhere}`, undefined, options)
        .getContainerClient("jssdk")
        .getProperties(),
    );
    const containerSas = generateBlobSASQueryParameters(
      {
        containerName: "jssdk",
        permissions: ContainerSASPermissions.parse("rwl"),
        expiresOn,
        ipRange: { start: "127.0.0.1", end: "127.0.0.1" },
      },
      credential,
    ).toString();
    const viaContainer = new BlobServiceClient(`${endpoint}?${containerSas}`, undefined, options).getContainerClient("jssdk");
    const names = (await listAll(viaContainer.listBlobsFlat({ prefix: "dir/" }))).map((b) => b.name);
    eq(names, ["dir/a", "dir/b", "dir/sub/c"], "list with a container SAS");
    await viaContainer.getPageBlobClient("dir/a").uploadPages(pattern(6, 512), 0, 512);
    const account = generateAccountSASQueryParameters(
      {
        expiresOn,
        permissions: AccountSASPermissions.parse("rwlc"),
        services: "b",
        resourceTypes: "sco",
      },
      credential,
    ).toString();
    const viaAccount = new BlobServiceClient(`${endpoint}?${account}`, undefined, options);
    const listed = (await listAll(viaAccount.listContainers({ prefix: "js" }))).map((c) => c.name);
    eq(listed, ["jssdk"], "list containers with an account SAS");
    await viaAccount.getContainerClient("jssas").create();
    const blobOnly = generateAccountSASQueryParameters(
      { expiresOn, permissions: AccountSASPermissions.parse("rwlc"), services: "q", resourceTypes: "o" },
      credential,
    ).toString();
    await expectError(403, "AuthorizationServiceMismatch", () =>
      new BlobServiceClient(`${endpoint}?${blobOnly}`, undefined, options)
        .getContainerClient("jssdk")
        .getPageBlobClient("disk.bin")
        .getProperties(),
    );
  });

  await check("premium snapshot cap", async () => {
    if (profile !== "premium") return;
    const capped = cont.getPageBlobClient("limit.bin");
    await capped.create(4096);
    for (let i = 0; i < 100; i++) await capped.createSnapshot();
    await expectError(409, "SnapshotCountExceeded", () => capped.createSnapshot());
    summary.limit = 100;
  });

  await check("delete with snapshots", async () => {
    const gone = cont.getPageBlobClient("gone.bin");
    await gone.create(512);
    await gone.createSnapshot();
    await expectError(409, "SnapshotsPresent", () => gone.delete());
    await gone.delete({ deleteSnapshots: "include" });
    await expectError(404, "BlobNotFound", () => gone.getProperties());
  });

  summary.sha256 = sha(await readAll(blob, 0, 4 * MiB));
  summary.snap1Sha256 = sha(await readAll(blob.withSnapshot(summary.snap1), 0, 4 * MiB));
  summary.etag = (await blob.getProperties()).etag;
  summary.listed = (await listAll(cont.listBlobsFlat({ includeSnapshots: true }))).map(
    (b) => `${b.name}@${b.snapshot || ""}`,
  );
  summary.passed = passed;
  return summary;
}

async function verify(endpoint, expected) {
  const svc = new BlobServiceClient(endpoint, credential, options);
  const cont = svc.getContainerClient("jssdk");
  const blob = cont.getPageBlobClient("disk.bin");
  await check("content, snapshot, metadata and headers survive the restart", async () => {
    eq(sha(await readAll(blob, 0, 4 * MiB)), expected.sha256, "blob content");
    eq(sha(await readAll(blob.withSnapshot(expected.snap1), 0, 4 * MiB)), expected.snap1Sha256, "snapshot");
    const p = await blob.getProperties();
    eq(p.metadata, { state: "replicating" }, "metadata");
    eq(p.cacheControl, "max-age=5", "content headers");
    eq(p.etag, expected.etag, "ETag");
    eq((await cont.getProperties()).metadata, { owner: "dr" }, "container metadata");
    const copy = await cont.getPageBlobClient("copy.bin").getProperties();
    eq(copy.destinationSnapshot, expected.copySnapshot, "copy destination snapshot");
    const listed = (await listAll(cont.listBlobsFlat({ includeSnapshots: true }))).map(
      (b) => `${b.name}@${b.snapshot || ""}`,
    );
    eq(listed, expected.listed, "listing");
    if (expected.limit) {
      await expectError(409, "SnapshotCountExceeded", () =>
        cont.getPageBlobClient("limit.bin").createSnapshot(),
      );
    }
  });
  return { ok: true, passed };
}

async function main() {
  const [endpoint, phase, profile = "standard"] = process.argv.slice(2);
  let out;
  if (phase === "write") {
    out = await write(endpoint, profile);
  } else {
    const chunks = [];
    for await (const c of process.stdin) chunks.push(c);
    out = await verify(endpoint, JSON.parse(Buffer.concat(chunks).toString()));
  }
  out.failed = failures;
  out.ran = passed + failures.length;
  process.stdout.write(`${JSON.stringify(out)}\n`);
  process.exit(failures.length ? 1 : 0);
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.stdout.write(`${JSON.stringify({ passed, failed: failures, ran: passed + failures.length })}\n`);
  process.exit(1);
});
