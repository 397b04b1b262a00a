/**
 * What an agent and meshgate's agent plane agree on (docs/agent.md): where an agent registers, the
 * WebSocket subprotocol of the tunnel, the name its certificate must carry, and the header by
 * which meshgate tells the agent which of its processes the tunnel reached.
 */

/** The WebSocket subprotocol of this version of the tunnel: HTTP/2 inside, meshgate the client. */
export const AGENT_PROTOCOL = 'meshgate-agent.v1';
/** `/agent/v1/clusters/<clusterId>`, on the tenant's own host. */
export const AGENT_PATH_PREFIX = '/agent/v1/clusters/';
/** An agent's certificate names the one cluster it may register: its subject CN is this, then the cluster id. */
export const AGENT_SUBJECT_PREFIX = 'system:meshgate-agent:';
/** Sent with the 101: which meshgate process the tunnel reached. */
export const INSTANCE_HEADER = 'meshgate-instance';
