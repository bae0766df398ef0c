import { TableRouter } from '../../proxy/router/index.ts';
import { routerContract } from '../contract/router.ts';

routerContract('table', (hosts) => new TableRouter(hosts));
