/** What a backend is told about the machine it makes (also the JSON the command backend's commands get on stdin). */
export interface MachineDescription {
  readonly id: string;
  /** The system type, `x86_64-linux` or `x86_64-linux:kvm,big`. */
  readonly type: string;
  readonly system: string;
  readonly features: readonly string[];
  readonly maxJobs: number;
  readonly speedFactor: number;
  readonly tag: string;
}

/** A machine as the backend lists it (and as create answers). */
export interface BackendMachine {
  readonly id: string;
  readonly state: 'running' | 'stopped';
  /** The system type, when the backend knows it (adopting a machine without a snapshot needs it). */
  readonly type?: string;
  /** An SSH build machine: its machines-file name (`root@host`), which the runner reports it by. */
  readonly sshName?: string;
  /** Its public host key line, for column 8 of the machines file. */
  readonly hostKey?: string;
}

/**
 * Where machines come from. Every operation is idempotent by machine id:
 * after a crash the provisioner may ask again for what it asked before.
 * `list` answers every machine of this provisioner's tag the backend has.
 */
export interface ProvisionBackend {
  create(d: MachineDescription): Promise<BackendMachine>;
  start(d: MachineDescription): Promise<void>;
  stop(d: MachineDescription): Promise<void>;
  destroy(d: MachineDescription): Promise<void>;
  list(): Promise<BackendMachine[]>;
}
