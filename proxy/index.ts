export { type Endpoint, Gateway, type GatewayOptions } from './gateway.ts';
export { rescue } from './rescue.ts';
