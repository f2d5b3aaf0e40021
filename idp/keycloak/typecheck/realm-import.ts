// The Keycloak import, type-checked against Keycloak's own RealmRepresentation (the npm package
// @keycloak/keycloak-admin-client, the same version as the pinned image): `npx tsc -p .` (strict).
// A wrong type (`"publicClient": "yes"`) fails the assignment; a field Keycloak does not know
// fails the `NoExtra` checks (JSON imports skip TypeScript's excess-property check otherwise).
//
// Local overrides, where the package's types are incomplete or wrong for an import file:
// - RealmRepresentation lacks every `webAuthnPolicy*` and `webAuthnPolicyPasswordless*` field;
// - `authenticationFlows`, `authenticatorConfig`, `clientScopes`, `scopeMappings` are `any[]`:
//   typed here with the package's own flow, config and client-scope types;
// - AuthenticationExecutionExportRepresentation spells `autheticatorFlow` (Java:
//   `authenticatorFlow`); ProtocolMapperRepresentation lacks `consentRequired`;
// - `components` is a multivalued map in Java (a list per provider type, each config value a
//   list of strings); the package types one component with string values;
// - `bruteForceStrategy` is the union "MULTIPLE" | "LINEAR", which a JSON import widens to
//   string (the semantic tests check the value); for the same reason (TypeScript normalises a
//   JSON array of objects into one type whose missing keys are `?: undefined`) authenticator
//   config and component config values may be `undefined`.
import type RealmRepresentation from "@keycloak/keycloak-admin-client/lib/defs/realmRepresentation.js";
import type ClientRepresentation from "@keycloak/keycloak-admin-client/lib/defs/clientRepresentation.js";
import type ClientScopeRepresentation from "@keycloak/keycloak-admin-client/lib/defs/clientScopeRepresentation.js";
import type ProtocolMapperRepresentation from "@keycloak/keycloak-admin-client/lib/defs/protocolMapperRepresentation.js";
import type AuthenticationFlowRepresentation from "@keycloak/keycloak-admin-client/lib/defs/authenticationFlowRepresentation.js";
import type AuthenticationExecutionExportRepresentation from "@keycloak/keycloak-admin-client/lib/defs/authenticationExecutionExportRepresentation.js";
import type AuthenticatorConfigRepresentation from "@keycloak/keycloak-admin-client/lib/defs/authenticatorConfigRepresentation.js";
import type UserRepresentation from "@keycloak/keycloak-admin-client/lib/defs/userRepresentation.js";
import type CredentialRepresentation from "@keycloak/keycloak-admin-client/lib/defs/credentialRepresentation.js";
import type RoleRepresentation from "@keycloak/keycloak-admin-client/lib/defs/roleRepresentation.js";
import type GroupRepresentation from "@keycloak/keycloak-admin-client/lib/defs/groupRepresentation.js";
import data from "../realm-dicomweb.json";

type Mapper = ProtocolMapperRepresentation & { consentRequired?: boolean };
type Execution = Omit<AuthenticationExecutionExportRepresentation, "autheticatorFlow"> & {
  authenticatorFlow?: boolean;
};
type Flow = Omit<AuthenticationFlowRepresentation, "authenticationExecutions"> & {
  authenticationExecutions?: Execution[];
};
type Client = Omit<ClientRepresentation, "protocolMappers"> & { protocolMappers?: Mapper[] };
type Scope = Omit<ClientScopeRepresentation, "protocolMappers"> & { protocolMappers?: Mapper[] };
type AuthConfig = Omit<AuthenticatorConfigRepresentation, "config"> & {
  config?: Record<string, string | undefined>;
};
type ScopeMapping = { client?: string; clientScope?: string; roles: string[] };
type Component = {
  id?: string;
  name?: string;
  providerId?: string;
  subType?: string;
  subComponents?: Record<string, Component[]>;
  config?: Record<string, string[] | undefined>;
};
type WebAuthnPolicy<P extends string> = {
  [K in `${P}${
    | "RpEntityName"
    | "SignatureAlgorithms"
    | "RpId"
    | "AttestationConveyancePreference"
    | "AuthenticatorAttachment"
    | "RequireResidentKey"
    | "UserVerificationRequirement"
    | "CreateTimeout"
    | "AvoidSameAuthenticatorRegister"
    | "AcceptableAaguids"
    | "ExtraOrigins"}`]?: K extends `${string}SignatureAlgorithms` | `${string}AcceptableAaguids` | `${string}ExtraOrigins`
    ? string[]
    : K extends `${string}CreateTimeout`
      ? number
      : K extends `${string}AvoidSameAuthenticatorRegister`
        ? boolean
        : string;
};

export type RealmImport = Omit<
  RealmRepresentation,
  | "authenticationFlows"
  | "authenticatorConfig"
  | "clientScopes"
  | "scopeMappings"
  | "components"
  | "clients"
  | "bruteForceStrategy"
> &
  WebAuthnPolicy<"webAuthnPolicy"> &
  WebAuthnPolicy<"webAuthnPolicyPasswordless"> & {
    clients?: Client[];
    authenticationFlows?: Flow[];
    authenticatorConfig?: AuthConfig[];
    clientScopes?: Scope[];
    scopeMappings?: ScopeMapping[];
    components?: Record<string, Component[]>;
    bruteForceStrategy?: string;
  };

// Keys of T (each member of a union) that S does not declare; must be `never`.
type Extra<T, S> = T extends unknown ? Exclude<keyof T, keyof S> : never;
type NoExtra<T extends never> = T;
type Item<A> = A extends readonly (infer E)[] ? E : never;
type D = typeof data;

export const realm: RealmImport = data;

export type Checked = [
  NoExtra<Extra<D, RealmImport>>,
  NoExtra<Extra<Item<D["clients"]>, Client>>,
  NoExtra<Extra<Item<Item<D["clients"]>["protocolMappers"]>, Mapper>>,
  NoExtra<Extra<Item<D["clientScopes"]>, Scope>>,
  NoExtra<Extra<Item<NonNullable<Item<D["clientScopes"]>["protocolMappers"]>>, Mapper>>,
  NoExtra<Extra<Item<D["users"]>, UserRepresentation>>,
  NoExtra<Extra<Item<Item<D["users"]>["credentials"]>, CredentialRepresentation>>,
  NoExtra<Extra<Item<D["roles"]["realm"]>, RoleRepresentation>>,
  NoExtra<Extra<Item<D["groups"]>, GroupRepresentation>>,
  NoExtra<Extra<Item<D["authenticationFlows"]>, Flow>>,
  NoExtra<Extra<Item<Item<D["authenticationFlows"]>["authenticationExecutions"]>, Execution>>,
  NoExtra<Extra<Item<D["authenticatorConfig"]>, AuthConfig>>,
  NoExtra<Extra<Item<D["scopeMappings"]>, ScopeMapping>>,
  NoExtra<Extra<Item<D["components"]["org.keycloak.keys.KeyProvider"]>, Component>>,
];
