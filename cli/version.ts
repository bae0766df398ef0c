/** Tide's version, shown by `tide --version` and the control API. */
export const VERSION = '0.1.0';
