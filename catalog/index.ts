// The catalog's public surface.
export { Catalog, CatalogError, openCatalog, type OpenCatalogOptions, type RecordPointResult } from './catalog.js';
export { CATALOG_APPLICATION_ID, LATEST_SCHEMA_VERSION, MIGRATIONS, type Migration } from './migrations.js';
export {
  DERIVED_TABLES,
  compareCatalogs,
  dumpCatalog,
  rebuildCatalog,
  type CatalogDifference,
  type CatalogDump,
  type RebuildSource,
  type RebuildSummary,
} from './rebuild.js';
export * from './records.js';
