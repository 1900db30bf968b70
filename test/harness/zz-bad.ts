import { x } from '../tools/loadgen';
