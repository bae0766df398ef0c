/**
 * The one structured logger (pino, JSON lines). Components take a child:
 * `log.child({ component: 'runtime.agent' })`. Messages are short constants; details go in fields.
 */
import { pino } from 'pino';

export type Logger = pino.Logger;

export function createLogger(options: { level?: string; destination?: number | string } = {}): Logger {
  const level = options.level ?? process.env.TIDE_LOG_LEVEL ?? 'info';
  const dest = pino.destination({ dest: options.destination ?? 2, sync: true });
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, dest);
}

/** A logger that drops everything (tests and library use without a sink). */
export const silentLogger: Logger = pino({ level: 'silent' });
