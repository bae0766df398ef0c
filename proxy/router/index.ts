export * from './router.ts';
export { TableRouter } from './table.ts';
