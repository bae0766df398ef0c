import { WorkerDriver } from '../../runtime/sandbox/worker/driver.ts';
import { sandboxDriverContract } from '../contract/sandbox-driver.ts';

sandboxDriverContract('worker', () => new WorkerDriver());
