export * from './constants';
export * from './messages';
export * from './errors';
export * from './decoder';
export * from './serializer';
export * from './framer';
export * from './sparse';
export * from './identity';
