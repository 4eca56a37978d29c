import type { Command } from '../command.js';
import { backupCommand } from './backup.js';
import { forgetCommand } from './forget.js';
import { gcCommand } from './gc.js';
import { pointsList, pointsShow } from './points.js';
import { repoInit } from './repo-init.js';
import { repoKeyAdd, repoKeyList, repoKeyRemove } from './repo-key.js';
import { restoreCommand } from './restore.js';
import { verifyCommand } from './verify.js';
import { doctorCommand } from './doctor.js';
import { pointCreate } from './point-create.js';
import { pointExport } from './point-export.js';
import { pointList } from './point-list.js';
import { pointRelease } from './point-release.js';
import { vmRestore } from './restore-vm.js';
import { snapshotCreate } from './snapshot-create.js';
import { siteServeCommand } from './site-serve.js';
import { vmPause, vmResume, vmStatus, vmStop } from './vm-control.js';
import { vmRun } from './vm-run.js';

// One line per command module; keep sorted by path.
export const commands: Command[] = [
  backupCommand,
  doctorCommand,
  forgetCommand,
  gcCommand,
  pointCreate,
  pointExport,
  pointList,
  pointRelease,
  pointsList,
  pointsShow,
  repoInit,
  repoKeyAdd,
  repoKeyList,
  repoKeyRemove,
  restoreCommand,
  siteServeCommand,
  snapshotCreate,
  verifyCommand,
  vmPause,
  vmRestore,
  vmResume,
  vmRun,
  vmStatus,
  vmStop,
];
