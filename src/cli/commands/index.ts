import type { CommandEntry } from '../command.js';

// Every command by path, its module loaded only when it runs (so `vm run` does not pay for the S3 SDK).
// One line per command, sorted by path; test/cli/commands.test.ts checks each entry against its module.
export const commands: CommandEntry[] = [
  { path: ['backup'], load: async () => (await import('./backup.js')).backupCommand },
  { path: ['catalog', 'events'], load: async () => (await import('./catalog-history.js')).catalogEvents },
  { path: ['catalog', 'jobs'], load: async () => (await import('./catalog-history.js')).catalogJobs },
  { path: ['catalog', 'points'], load: async () => (await import('./catalog-points.js')).catalogPoints },
  { path: ['catalog', 'rebuild'], load: async () => (await import('./catalog-rebuild.js')).catalogRebuild },
  { path: ['doctor'], load: async () => (await import('./doctor.js')).doctorCommand },
  { path: ['forget'], load: async () => (await import('./forget.js')).forgetCommand },
  { path: ['gc'], load: async () => (await import('./gc.js')).gcCommand },
  { path: ['point', 'create'], load: async () => (await import('./point-create.js')).pointCreate },
  { path: ['point', 'export'], load: async () => (await import('./point-export.js')).pointExport },
  { path: ['point', 'list'], load: async () => (await import('./point-list.js')).pointList },
  { path: ['point', 'release'], load: async () => (await import('./point-release.js')).pointRelease },
  { path: ['points', 'list'], load: async () => (await import('./points.js')).pointsList },
  { path: ['points', 'show'], load: async () => (await import('./points.js')).pointsShow },
  { path: ['repo', 'init'], load: async () => (await import('./repo-init.js')).repoInit },
  { path: ['repo', 'key', 'add'], load: async () => (await import('./repo-key.js')).repoKeyAdd },
  { path: ['repo', 'key', 'list'], load: async () => (await import('./repo-key.js')).repoKeyList },
  { path: ['repo', 'key', 'remove'], load: async () => (await import('./repo-key.js')).repoKeyRemove },
  { path: ['restore'], load: async () => (await import('./restore.js')).restoreCommand },
  { path: ['site', 'serve'], load: async () => (await import('./site-serve.js')).siteServeCommand },
  { path: ['snapshot', 'create'], load: async () => (await import('./snapshot-create.js')).snapshotCreate },
  { path: ['verify'], load: async () => (await import('./verify.js')).verifyCommand },
  { path: ['vm', 'pause'], load: async () => (await import('./vm-control.js')).vmPause },
  { path: ['vm', 'restore'], load: async () => (await import('./restore-vm.js')).vmRestore },
  { path: ['vm', 'resume'], load: async () => (await import('./vm-control.js')).vmResume },
  { path: ['vm', 'run'], load: async () => (await import('./vm-run.js')).vmRun },
  { path: ['vm', 'status'], load: async () => (await import('./vm-control.js')).vmStatus },
  { path: ['vm', 'stop'], load: async () => (await import('./vm-control.js')).vmStop },
];
