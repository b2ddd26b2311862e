//! The simulated world's fixed parts ([`Env`]), built once per run and borrowed by every disk's
//! agent: the virtual clock, the storage account (its fault injector, and the retrying view
//! Azure's failover jobs read through), a premium account's log store, the registration
//! certificate, and the file system the stores and change trackers live in (in memory unless
//! the run keeps them in a directory). Also the seeded random streams ([`stream`]) and the
//! construction of each simulated disk ([`Env::new_disk`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use datapath::agent::AgentTarget;
use datapath::driver::ReplicationDriver;
use datapath::keys::{Identity, KeyId};
use datapath::policy::Policy;
use datapath::replica::block_record::BlockCodec;
use datapath::replica::disk_replica::{DiskReplica, JournalReads};
use datapath::tracking::ChangeTracker;
use pageblob::clock::{Clock, ManualClock};
use pageblob::data_log::Durability;
use pageblob::faults::{FaultConfig, FaultyStore};
use pageblob::fs::{RealFs, StoreFs};
use pageblob::memory_fs::CrashFs;
use pageblob::read_retry::ReadRetry;
use pageblob::{Emulator, PageBlobStore, Profile};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use vhdx::{CreateOptions, MemoryFile, VhdxWriter};

use crate::audit::PointAudit;
use crate::content::ContentModel;
use crate::report::{DiskReport, SimError};
use crate::scenario::{DiskSpec, Scenario, VmSpec};
use crate::sim_disk::{workload_bytes, SimDisk};

/// The container every replica blob lives in.
pub(crate) const CONTAINER: &str = "replicas";

/// Per-component random streams: each is ChaCha8 keyed by BLAKE3 of the seed and its label.
pub(crate) fn stream(seed: u64, label: &str) -> ChaCha8Rng {
    let mut material = seed.to_le_bytes().to_vec();
    material.extend_from_slice(label.as_bytes());
    ChaCha8Rng::from_seed(blake3::derive_key("drplane sim stream v1", &material))
}

/// Where the simulated world keeps its stores' and change trackers' files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// In memory: the run leaves no file behind.
    Memory,
    /// In this (new or empty) directory, to inspect the stores after the run.
    Directory(PathBuf),
}

pub(crate) struct Env {
    pub(crate) seed: u64,
    pub(crate) clock: Arc<ManualClock>,
    /// The storage account itself: the checker reads it straight, never through faults.
    pub(crate) emulator: Arc<Emulator>,
    /// The account as the hosts' agents reach it, faults injected as the scenario says.
    pub(crate) store: Arc<FaultyStore<Arc<Emulator>>>,
    /// The account as Azure's failover jobs read it: transient errors are retried.
    pub(crate) azure_side: ReadRetry<Arc<FaultyStore<Arc<Emulator>>>>,
    /// The fault configuration with no fault on (a storm's end returns to it).
    pub(crate) calm: FaultConfig,
    /// A premium account's standard log store (the staging log of each cycle).
    pub(crate) log_store: Option<Emulator>,
    fs: Arc<dyn StoreFs>,
    trackers: PathBuf,
    /// The registration certificate: seeded key material (the real .pfx path is tested apart).
    pub(crate) identity: Identity,
    /// Another host's certificate, for the wrong-certificate fault.
    pub(crate) wrong_identity: Identity,
    /// The profile's snapshots per blob, if it limits them.
    pub(crate) snapshot_limit: Option<usize>,
}

impl Env {
    /// Build the world's fixed parts for `scenario` and `seed`, their files where `storage`
    /// says (a directory's stores are locked as any writer's are: two runs cannot share them).
    pub(crate) fn build(
        scenario: &Scenario,
        seed: u64,
        storage: &Storage,
    ) -> Result<Env, SimError> {
        let (fs, root): (Arc<dyn StoreFs>, PathBuf) = match storage {
            Storage::Memory => (Arc::new(CrashFs::new()), PathBuf::from("/drplane-sim")),
            Storage::Directory(dir) => (Arc::new(RealFs), dir.clone()),
        };
        let clock = Arc::new(ManualClock::new(scenario.start_nanos));
        let open_store = |dir: &str, profile: Profile| {
            let path = root.join(dir);
            let store = match storage {
                Storage::Memory => Emulator::open_with_fs(
                    Arc::clone(&fs),
                    &path,
                    profile,
                    Durability::Process,
                    clock.clone(),
                ),
                Storage::Directory(_) => {
                    Emulator::open(&path, profile, Durability::Process, clock.clone())
                }
            };
            store.map_err(|e| SimError::Setup(format!("{}: {e}", dir.replace('-', " "))))
        };
        let emulator = Arc::new(open_store("store", scenario.profile)?);
        let calm = FaultConfig {
            seed: stream(seed, "storage faults").next_u64(),
            ..FaultConfig::default()
        };
        let store = Arc::new(FaultyStore::new(Arc::clone(&emulator), calm));
        let azure_side = ReadRetry::new(Arc::clone(&store), 16);
        let log_store = if scenario.profile != Profile::Standard {
            Some(open_store("log-store", Profile::Standard)?)
        } else {
            None
        };
        let trackers = root.join("trackers");
        fs.create_dir_all(&trackers).map_err(SimError::Storage)?;
        let mut cert = stream(seed, "certificate");
        let mut key_der = [0u8; 64];
        cert.fill_bytes(&mut key_der);
        let mut key_id = [0u8; 20];
        cert.fill_bytes(&mut key_id);
        let identity =
            Identity::from_key_material(KeyId(key_id), "CN=simulated host".into(), &key_der);
        let wrong_identity = {
            let mut other = stream(seed, "another certificate");
            let mut der = [0u8; 64];
            other.fill_bytes(&mut der);
            Identity::from_key_material(KeyId([0xEE; 20]), "CN=another host".into(), &der)
        };
        Ok(Env {
            seed,
            clock,
            emulator,
            store,
            azure_side,
            calm,
            log_store,
            fs,
            trackers,
            identity,
            wrong_identity,
            snapshot_limit: scenario.profile.max_snapshots_per_blob(),
        })
    }

    /// Start the replication agent of disk `name` (agent epoch `epoch`: its nonce stream),
    /// with its change tracker from the tracker folder.
    pub(crate) fn open_agent(
        &self,
        name: &str,
        size: u64,
        epoch: u64,
        policy: &Policy,
    ) -> Result<(ReplicationDriver<'_>, ChangeTracker), SimError> {
        let tracker_path = self.trackers.join(format!("{name}.ctb"));
        let (mut tracker, untrusted) = ChangeTracker::open_in(
            Arc::clone(&self.fs),
            &tracker_path,
            name,
            size,
            policy.block_size,
        )
        .map_err(|e| SimError::Setup(format!("tracker {name}: {e}")))?;
        // A simulated host crash kills the agent, not the OS: no fsync needed (or charged).
        tracker.set_power_safe(false);
        let mut driver = ReplicationDriver::open(
            AgentTarget {
                snapshot_limit: self.snapshot_limit,
                store: &*self.store,
                container: CONTAINER,
                name,
                log_store: self.log_store.as_ref().map(|s| s as &dyn PageBlobStore),
            },
            &self.identity,
            policy.clone(),
            size,
            untrusted.map(|u| u.to_string()),
            true,
            Box::new(stream(self.seed, &format!("nonces/{name}/{epoch}"))),
            self.clock.now_nanos(),
        )
        .map_err(|e| SimError::Setup(format!("agent {name}: {e}")))?;
        // Store calls in a fixed order: fault draws do not depend on thread scheduling.
        driver.agent_mut().set_simulated(true);
        Ok((driver, tracker))
    }

    /// Disk `spec` of `vm`: its VHDX written with the data already on it, its agent started,
    /// the checker's views of its replica opened.
    pub(crate) fn new_disk(
        &self,
        scenario: &Scenario,
        vm: &VmSpec,
        spec: &DiskSpec,
    ) -> Result<SimDisk<'_>, SimError> {
        let seed = self.seed;
        let name = format!("{}-{}", vm.name, spec.name);
        let setup = |e: &dyn std::fmt::Display| SimError::Setup(format!("disk {name}: {e}"));
        let file = Arc::new(MemoryFile::new());
        let options = CreateOptions {
            block_size: 1 << 20,
            ..CreateOptions::dynamic(spec.size_bytes)
        };
        let mut writer = VhdxWriter::create(
            Arc::clone(&file),
            &options,
            Box::new(stream(seed, &format!("guids/{name}"))),
        )
        .map_err(|e| setup(&e))?;
        // The host's change tracking hears of writes through the VHDX writer's hook; the
        // checker's model is fed from what the workload meant to write (`touched`), so a
        // write the hook misses shows up as a point that differs from the model.
        let marks = Arc::new(Mutex::new(Vec::new()));
        let touched = Arc::new(Mutex::new(Vec::new()));
        let hook_marks = Arc::clone(&marks);
        writer.set_write_hook(move |o, l| {
            hook_marks.lock().expect("marks").push((o, l));
        });
        // The data already on the disk when replication is enabled.
        let mut fill = stream(seed, &format!("fill/{name}"));
        let mut at = 0u64;
        while at < spec.used_bytes {
            let len = (spec.used_bytes - at).min(1 << 20) as usize;
            let data = workload_bytes(&mut fill, len, scenario.incompressible);
            writer.write_at(at, &data).map_err(|e| setup(&e))?;
            touched.lock().expect("touched").push((at, len as u64));
            at += len as u64;
        }
        writer.flush().map_err(|e| setup(&e))?;
        let (driver, tracker) = self.open_agent(&name, spec.size_bytes, 0, &vm.policy)?;
        let layout = driver.agent().replica.layout;
        let replica_error =
            |e: &dyn std::fmt::Display| SimError::Setup(format!("replica {name}: {e}"));
        let mut observer = DiskReplica::open(&*self.emulator, CONTAINER, &name, layout)
            .map_err(|e| replica_error(&e))?;
        // The checker lists each disk's points twice a cycle, straight from the account.
        observer.set_journal_reads(JournalReads::SlotHeads);
        let azure_view = DiskReplica::open(&self.azure_side, CONTAINER, &name, layout)
            .map_err(|e| replica_error(&e))?;
        let digest_key = *self.identity.disk_keys(&name).digest.expose();
        Ok(SimDisk {
            vm: vm.name.clone(),
            azure: None,
            test_copy: None,
            spec: spec.clone(),
            codec: BlockCodec::new(&self.identity.disk_keys(&name), 1, true),
            digest_key,
            crash_stream: stream(seed, &format!("mid-cycle crash/{name}")),
            replica_name: name,
            file,
            writer,
            marks,
            driver,
            tracker,
            workload: stream(seed, &format!("workload/{}/{}", vm.name, spec.name)),
            churn_carry: 0,
            incompressible: scenario.incompressible,
            burst: 1,
            crash_in_next_cycle: false,
            arriving: BTreeMap::new(),
            warnings: Vec::new(),
            rpo_base: None,
            cycle_started: 0,
            epoch: 0,
            images: BTreeMap::new(),
            model: ContentModel::zeroed(spec.size_bytes, vm.policy.block_size, digest_key),
            policy: vm.policy.clone(),
            host: vm.host.clone(),
            host_index: scenario
                .hosts
                .iter()
                .position(|h| *h == vm.host)
                .unwrap_or(0),
            touched,
            audit: PointAudit::default(),
            observer,
            azure_view,
            agent_down: false,
            report: DiskReport {
                vm: vm.name.clone(),
                disk: spec.name.clone(),
                rpo_target_secs: 2.0 * f64::from(vm.policy.copy_frequency_secs),
                ..DiskReport::default()
            },
        })
    }
}
