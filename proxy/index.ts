export { type Endpoint, Gateway, type GatewayOptions } from './gateway.ts';
export { errorResponse } from './rescue.ts';
