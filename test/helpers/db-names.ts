export const TEMPLATE_DB = 'hydrant_template';
